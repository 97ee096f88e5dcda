"""transferlab's Optuna sweeper (``sweep=optuna``, src/hydra_plugins/transferlab_optuna): the search-space syntax
as Optuna distributions, the study loop (a total of n_trials, interrupted trials re-run in their own directory,
failed trials told FAIL) with a stand-in launcher, in-process and fast; then through the real CLI: a sweep killed
mid-trial and re-launched, a failing trial, and optuna-dashboard on the study."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, read_write

from conftest import kill_when, run_cli, start_cli
from transferlab.constants import FAILED_FILE, METRICS_FILE, OPTUNA_TRIAL_ENV
from transferlab.sweeps import EXIT_JOBS_FAILED
from transferlab.utils.errors import UserError
from transferlab.utils.optuna_storage import open_storage

optuna = pytest.importorskip(
    "optuna", minversion="4", reason='needs the [optuna] extra: pip install "transferlab[optuna]"'
)
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from hydra_plugins.transferlab_optuna._space import parse_search_space  # noqa: E402
from hydra_plugins.transferlab_optuna._study import OVERRIDES_ATTR, OptunaSweep  # noqa: E402
from hydra_plugins.transferlab_optuna.sweeper import require_optuna  # noqa: E402


# -- the search-space syntax ------------------------------------------------------------------------------------
def test_every_search_space_syntax_becomes_the_right_optuna_distribution() -> None:
    space = parse_search_space(
        [
            "lr=tag(log, interval(0.0001, 0.03))",
            "momentum=interval(0.5, 0.99)",
            "epochs=interval(1, 8)",
            "width=tag(log, interval(8, 256))",
            "depth=tag(int, interval(2.0, 6.0))",
            "name=choice(resnet18, 'a b', 'x,y', 3, 2.5, true)",
            "batch=range(8, 33, 8)",
            "drop=range(0.1, 0.35, 0.1)",
            "layers=tag(log, range(1, 5))",
            "order=shuffle(range(3))",
            "seed=7",
            "+extra=[1,2]",
            "momentum=interval(0.8, 0.9)",  # the command line's override replaces hydra.sweeper.params' entry
        ]
    )
    d = space.distributions
    assert d["lr"] == FloatDistribution(0.0001, 0.03, log=True)
    assert d["momentum"] == FloatDistribution(0.8, 0.9)
    assert d["epochs"] == IntDistribution(1, 8)  # bounds written as integers: an integer interval
    assert d["width"] == IntDistribution(8, 256, log=True)
    assert d["depth"] == IntDistribution(2, 6)
    assert d["name"] == CategoricalDistribution(["resnet18", "a b", "x,y", 3, 2.5, True])
    assert d["batch"] == IntDistribution(8, 32, step=8)  # range's stop is excluded, as in a grid sweep
    assert isinstance(d["drop"], FloatDistribution) and (d["drop"].low, d["drop"].step) == (0.1, 0.1)
    assert d["drop"].high == pytest.approx(0.3)
    assert d["layers"] == IntDistribution(1, 4, log=True)
    assert d["order"] == CategoricalDistribution([0, 1, 2])
    assert space.fixed == {"seed": "7", "+extra": "[1,2]"}
    assert list(d) == ["lr", "epochs", "width", "depth", "name", "batch", "drop", "layers", "order", "momentum"]
    # A trial's overrides: values Hydra reads back as the same value (quoted where they must be), fixed ones last.
    params = {"lr": 0.001, "epochs": 3, "width": 16, "depth": 2, "name": "a b", "batch": 16, "drop": 0.2}
    params |= {"layers": 2, "order": 1, "momentum": 0.85}
    overrides = space.overrides(params)
    assert overrides[4] == "name=a\\ b" and space.overrides({**params, "name": "x,y"})[4] == "name=x\\,y"
    assert overrides[0] == "lr=0.001" and overrides[-2:] == ["seed=7", "+extra=[1,2]"]
    assert space.grid["batch"] == [8, 16, 24, 32] and space.grid["name"][-1] is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("a=tag(log, choice(1, 2))", "tag\\(log, …\\) needs an interval or a range"),
        ("a=tag(log, interval(0, 1))", "needs a positive lower bound"),
        ("a=interval(2, 1)", "lower bound below its upper bound"),
        ("a=range(3, 3)", "has no values"),
        ("a=tag(log, range(1, 9, 2))", "must have step 1"),
        ("a=choice(1,", "cannot read the Optuna search space"),
    ],
)
def test_a_search_space_mistake_is_one_line(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_search_space([override])


def test_the_grid_sampler_needs_finite_values() -> None:
    space = parse_search_space(["a=choice(x, y)", "b=range(0, 3)"])
    assert space.grid_values() == {"a": ["x", "y"], "b": [0, 1, 2]}
    with pytest.raises(UserError, match="the grid sampler needs a finite list of values, but c is an interval"):
        parse_search_space(["a=choice(x, y)", "c=interval(0.1, 1.0)"]).grid_values()


def test_missing_or_old_optuna_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna → ImportError
    with pytest.raises(UserError, match=r'not installed. Run: pip install "transferlab\[optuna\]"'):
        require_optuna()
    monkeypatch.setitem(sys.modules, "optuna", types.SimpleNamespace(__version__="2.10.1"))
    with pytest.raises(UserError, match=r"needs Optuna 4 or newer, this environment has 2.10.1"):
        require_optuna()


# -- the study loop, with a stand-in launcher -------------------------------------------------------------------
class FakeLauncher:
    """Runs no training: each job gets a directory named from its overrides and returns a value computed from
    them (or fails, or was pruned), as Hydra's launchers hand back `JobReturn`s."""

    def __init__(self, sweep_dir: Path, fail_if: Callable[[dict[str, str]], bool] = lambda _: False) -> None:
        self.sweep_dir = sweep_dir
        self.fail_if = fail_if
        self.jobs: list[tuple[int, list[str]]] = []  # (trial number from the handover, the job's overrides)
        self.reports: list[bool] = []  # whether the job's callback may report per-epoch values

    def launch(self, job_overrides: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        returns = []
        for overrides in job_overrides:
            handover = [o for o in overrides if OPTUNA_TRIAL_ENV in o]
            assert len(handover) == 1, overrides
            spec = json.loads(handover[0].split("=", 1)[1].strip("'").replace("\\'", "'"))
            task = [o for o in overrides if o not in handover]
            self.jobs.append((spec["trial"], task))
            self.reports.append(spec["report"])
            job_dir = self.sweep_dir / ",".join(sorted(task))
            job_dir.mkdir(parents=True, exist_ok=True)
            values = dict(o.split("=", 1) for o in task)
            ret = JobReturn(status=JobStatus.COMPLETED)
            ret.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}}})
            if self.fail_if(values):
                ret.status, ret._return_value = JobStatus.FAILED, RuntimeError("the loss became NaN")
                (job_dir / FAILED_FILE).write_text(json.dumps({"outcome": "diverged", "error": "NaN loss"}))
            else:
                ret._return_value = float(values["x"]) ** 2
                summary = {"monitor": {"best": ret._return_value}, "metrics": {"test/acc": -ret._return_value}}
                (job_dir / METRICS_FILE).write_text(json.dumps({**summary, "wall_time_s": float(values["x"])}))
            returns.append(ret)
        return returns


def _sweep(cfg: DictConfig, launcher: FakeLauncher, *args: str) -> OptunaSweep:
    loader = types.SimpleNamespace(load_sweep_config=lambda **_: None)  # every trial's overrides compose
    sweep = OptunaSweep(cfg, launcher, types.SimpleNamespace(config_loader=loader))  # type: ignore[arg-type]
    sweep.run(list(args))
    return sweep


@pytest.fixture
def study_cfg(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str, x: str = "interval(-10.0, 10.0)") -> DictConfig:
        cfg = make_cfg(
            "sweep=optuna",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "hydra.sweeper.pruner=null",
            "monitor.mode=min",
            *overrides,
        )
        with read_write(cfg.hydra):
            cfg.hydra.sweeper.params = {"x": x}  # one key, for the stand-in launcher
        return cfg

    return make


def _study(cfg: DictConfig) -> Any:
    storage = open_storage(str(Path(cfg.hydra.sweep.dir) / "optuna.db"))
    return optuna.load_study(study_name=cfg.hydra.sweeper.study_name, storage=storage)


def test_n_trials_is_a_total_and_an_interrupted_trial_reruns_in_its_own_directory(
    study_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    launcher = FakeLauncher(sweep_dir)
    _sweep(study_cfg("hydra.sweeper.n_trials=3"), launcher, "y=3")
    study = _study(study_cfg())
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert [n for n, _ in launcher.jobs] == [0, 1, 2] and all(o[-1] == "y=3" for _, o in launcher.jobs)
    assert study.trials[0].user_attrs[OVERRIDES_ATTR] == launcher.jobs[0][1] and all(launcher.reports)
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == min(float(dict([o[0].split("=")])["x"]) ** 2 for _, o in launcher.jobs)
    assert results["complete_trials"] == 3 and results["failed_trials"] == 0

    # Re-launched as it was: the total is reached, nothing runs.
    launcher.jobs.clear()
    _sweep(study_cfg("hydra.sweeper.n_trials=3"), launcher, "y=3")
    assert launcher.jobs == [] and len(_study(study_cfg()).trials) == 3

    # A sweep killed mid-trial leaves it RUNNING (here: asked, given overrides and a directory, never told), and
    # one trial another program left running without overrides.
    sweep = OptunaSweep(study_cfg(), launcher, None)  # type: ignore[arg-type]
    study = _study(study_cfg())
    space = parse_search_space(["x=interval(-10.0, 10.0)", "y=3"])
    killed, killed_overrides = sweep._ask(study, space)
    study.ask()  # a stray RUNNING trial: nothing says where its job ran
    _sweep(study_cfg("hydra.sweeper.n_trials=6"), launcher, "y=3")
    assert launcher.jobs[0] == (killed, killed_overrides), "the interrupted trial first, with its own overrides"
    assert [n for n, _ in launcher.jobs] == [killed, 5]
    states = [t.state for t in _study(study_cfg()).trials]
    assert states == [*[TrialState.COMPLETE] * 4, TrialState.FAIL, TrialState.COMPLETE], "exactly n_trials"
    assert len({tuple(o) for _, o in launcher.jobs}) == 2

    # The same study with x now a list of choices: Optuna cannot mix them, one line says so, no trial is left RUNNING.
    with pytest.raises(UserError, match="the search space does not fit the study .*'s earlier trials"):
        _sweep(study_cfg("hydra.sweeper.n_trials=7", x="choice(1, 2)"), launcher)
    assert TrialState.RUNNING not in {t.state for t in _study(study_cfg()).trials}


def test_a_failing_trial_is_told_fail_counts_and_the_sweep_ends_with_one_line(
    study_cfg: Callable[..., DictConfig], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    launcher = FakeLauncher(tmp_path / "sweep", fail_if=lambda values: values["x"] == "2")
    cfg = study_cfg(
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler",
        x="choice(1, 2, 3)",
    )
    with pytest.raises(SystemExit) as ended:
        _sweep(cfg, launcher)
    assert ended.value.code == EXIT_JOBS_FAILED
    assert sorted(o for _, o in launcher.jobs) == [["x=1"], ["x=2"], ["x=3"]], "the grid caps n_trials at its size"
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"error: 1 of 3 jobs failed: {tmp_path / 'sweep' / 'x=2'}"
    states = {t.params["x"]: t.state for t in _study(cfg).trials}
    assert states == {1: TrialState.COMPLETE, 2: TrialState.FAIL, 3: TrialState.COMPLETE}
    launcher.jobs.clear()
    _sweep(cfg, launcher)  # a FAIL trial counts toward the total: nothing left to run (and no failure this time)
    assert launcher.jobs == []


def test_trials_per_batch_default_to_the_launchers_jobs(study_cfg: Callable[..., DictConfig]) -> None:
    assert OptunaSweep(study_cfg(), None, None).n_jobs == 1  # type: ignore[arg-type]
    assert OptunaSweep(study_cfg("+hydra.launcher.jobs=3"), None, None).n_jobs == 3  # type: ignore[arg-type]
    given = study_cfg("+hydra.launcher.jobs=3", "hydra.sweeper.n_jobs=2")
    assert OptunaSweep(given, None, None).n_jobs == 2  # type: ignore[arg-type]
    with pytest.raises(UserError, match="hydra.sweeper.n_trials=0 must be a whole number of at least 1"):
        OptunaSweep(study_cfg("hydra.sweeper.n_trials=0"), None, None)  # type: ignore[arg-type]


def test_a_multi_objective_study_reads_its_values_from_metrics_json(
    study_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    directions = "hydra.sweeper.direction=[maximize,minimize]"
    with pytest.raises(UserError, match="a multi-objective study needs hydra.sweeper.objectives"):
        OptunaSweep(study_cfg(directions), None, None)  # type: ignore[arg-type]
    launcher = FakeLauncher(tmp_path / "sweep")
    cfg = study_cfg(directions, "hydra.sweeper.objectives=[test/acc,wall_time_s]", "hydra.sweeper.n_trials=3")
    _sweep(cfg, launcher)
    trials = _study(cfg).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all(t.values == [-(t.params["x"] ** 2), t.params["x"]] for t in trials)
    assert launcher.reports == [False] * 3, "Optuna takes no per-epoch values of a multi-objective trial"
    front = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())["solutions"]
    assert {s["number"] for s in front} == {t.number for t in _study(cfg).best_trials}


# -- optuna-dashboard on a sweep's study ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_serves_the_sweeps_study(study_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    """The command the README gives, ``optuna-dashboard <sweep dir>/optuna.db``, lists the study."""
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (pip install optuna-dashboard)")
    cfg = study_cfg("hydra.sweeper.n_trials=2")
    _sweep(cfg, FakeLauncher(tmp_path / "sweep"))
    port = _free_port()
    command = "import sys; from optuna_dashboard._cli import main; sys.argv[0] = 'optuna-dashboard'; sys.exit(main())"
    storage = str(tmp_path / "sweep" / "optuna.db")  # the bare path: a journal file
    server = subprocess.Popen(
        [sys.executable, "-c", command, storage, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    studies = json.loads(response.read())["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, server.communicate()[0][-2000:]
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.3)
        assert [(s["study_name"], s["directions"]) for s in studies] == [(cfg.hydra.sweeper.study_name, ["minimize"])]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}") as response:
            trials = json.loads(response.read())["trials"]
        assert [t["state"] for t in trials] == ["Complete", "Complete"]
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- through the CLI --------------------------------------------------------------------------------------------
KILLED = [
    "-m",
    "sweep=optuna",
    "debug=tiny",
    "hydra.sweeper.n_trials=2",
    "hydra.sweeper.pruner=null",
    "trainer.max_epochs=6",
    "callbacks.model_checkpoint.last_every_minutes=0",  # last.ckpt after every epoch: something to resume from
]


@pytest.mark.slow
def test_a_sweep_killed_mid_trial_resumes_that_trial_in_its_own_directory(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "killed"
    args = [*KILLED, f"hydra.sweep.dir={sweep_dir}"]
    log = tmp_path / "first_launch.log"
    first = start_cli("tl-train", *args, cwd=tmp_path, log=log)
    kill_when(first, lambda: any(sweep_dir.glob("*/checkpoints/last.ckpt")), log, "a last.ckpt")
    (job,) = [p.parent.parent for p in sweep_dir.glob("*/checkpoints/last.ckpt")]
    storage = open_storage(str(sweep_dir / "optuna.db"))
    assert [t.state for t in optuna.load_study(study_name="debug", storage=storage).trials] == [TrialState.RUNNING]

    relaunch = run_cli("tl-train", *args, cwd=tmp_path)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert "Trials: 0 of 2 done, 1 interrupted to re-run (0), 1 new" in relaunch.stdout + relaunch.stderr
    assert f"Resuming unfinished job from {job / 'checkpoints' / 'last.ckpt'}" in relaunch.stdout
    summary = json.loads((job / METRICS_FILE).read_text())
    assert summary["resumed_from"] == str(job / "checkpoints" / "last.ckpt") and summary["epochs"] == 6
    assert summary["optuna_trial"]["number"] == 0
    assert len([p for p in sweep_dir.iterdir() if p.is_dir()]) == 2, "the re-run trial got no second directory"
    trials = optuna.load_study(study_name="debug", storage=storage).trials
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.COMPLETE), (1, TrialState.COMPLETE)]
    assert sorted(trials[0].intermediate_values) == list(range(6)), "every epoch reported, before and after the kill"


@pytest.mark.slow
def test_a_diverging_trial_fails_alone_and_the_sweep_ends_with_one_line(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "failing"
    args = [
        "-m",
        "sweep=optuna",
        "debug=tiny",
        "hydra.sweeper.pruner=null",
        "hydra.sweeper.sampler._target_=optuna.samplers.GridSampler",  # both values, in either order
        "model.optimizer.lr=choice(1e9,0.001)",
        "model.optimizer.weight_decay=0.0",
        "model.finetune.backbone_lr_mult=1.0",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    result = run_cli("tl-train", *args, cwd=tmp_path)
    assert result.returncode == EXIT_JOBS_FAILED, result.stderr[-3000:]
    (diverged,) = [p for p in sweep_dir.iterdir() if "lr=1000000000.0" in p.name]
    assert (diverged / FAILED_FILE).is_file() and not (diverged / METRICS_FILE).exists()
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: 1 of 2 jobs failed: {diverged}; see {diverged / 'train.log'}"
    assert "Traceback" not in result.stdout + result.stderr
    study = optuna.load_study(study_name="debug", storage=open_storage(str(sweep_dir / "optuna.db")))
    states = {t.params["model.optimizer.lr"]: t.state for t in study.trials}
    assert states == {1e9: TrialState.FAIL, 0.001: TrialState.COMPLETE}
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["failed_trials"] == 1 and results["best_params"]["model.optimizer.lr"] == 0.001
