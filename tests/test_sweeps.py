"""Sweeps as a user runs them: a multirun grid killed midway and re-launched, its report, TensorBoard on it,
Optuna, the submitit launcher; plus the fast pieces (job names, resolvers, launcher configs) in-process."""

from __future__ import annotations

import csv
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import DictConfig

from conftest import KEEP_LAST, kill_when, make_data, needs_extra, run_cli, start_cli, wait_for
from transferlab.data.shapes import ShapesDataModule
from transferlab.report import report
from transferlab.runner import build_trainer
from transferlab.train import run
from transferlab.utils.errors import UserError
from transferlab.utils.optuna_storage import open_storage
from transferlab.utils.resolvers import direction, job_dirname

ROOT = Path(__file__).resolve().parents[1]
GRID = ["debug=tiny", "data.examples_per_class=2,4", "seed=0,1"]
GRID_JOBS = {f"data.examples_per_class={k},debug=tiny,seed={s}" for k in (2, 4) for s in (0, 1)}
REPORT = [sys.executable, "-m", "transferlab.report"]


# -- job directory names, resolvers, configs (no training) ------------------------------------------------------
def test_job_dirname_is_readable_safe_and_stable() -> None:
    assert job_dirname("model.backbone.name=resnet18,seed=1") == "model.backbone.name=resnet18,seed=1"
    assert job_dirname("", 3) == "job3"
    weights = job_dirname("model.backbone.weights=/runs/a/best.ckpt,seed=0")
    assert "/" not in weights and weights.startswith("model.backbone.weights=_runs_a_best.ckpt,seed=0-")
    assert weights != job_dirname("model.backbone.weights=_runs_a_best.ckpt,seed=0"), "sanitising must not collide"
    optuna = job_dirname("model.optimizer.lr=0.0022881136684755237,seed=0")
    assert optuna.startswith("model.optimizer.lr=0.002288,seed=0-")
    long = ",".join(f"key{i}=value{i}" for i in range(40))
    assert len(job_dirname(long)) <= 160 and job_dirname(long) == job_dirname(long)
    assert job_dirname(long) != job_dirname(long + ",seed=1")


def test_optuna_direction_follows_monitor_mode(make_cfg: Callable[..., DictConfig]) -> None:
    assert (direction("max"), direction("min")) == ("maximize", "minimize")
    assert make_cfg("sweep=optuna").hydra.sweeper.direction == "maximize"
    cfg = make_cfg("sweep=optuna", "monitor.metric=val/loss", "monitor.mode=min")
    assert cfg.hydra.sweeper.direction == "minimize"
    assert set(cfg.hydra.sweeper.params) == {
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "model.finetune.backbone_lr_mult",
    }


def test_slurm_launcher_is_sized_from_the_trainer(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", tiny=False)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher._target_ == "hydra_plugins.transferlab_launcher.slurm.SlurmLauncher"
    # GPUs only for a GPU trainer: a CPU (or auto) trainer asks SLURM for none, which every cluster accepts.
    for trainer in (["trainer=ddp_sim"], ["trainer.accelerator=cpu"], []):
        cfg = make_cfg("hydra/launcher=slurm", *trainer, tiny=False)
        assert cfg.hydra.launcher.gpus_per_node is None, trainer
    assert make_cfg("hydra/launcher=slurm", "trainer=gpu", tiny=False).hydra.launcher.gpus_per_node == 1
    with pytest.raises(Exception, match=r"trainer.devices=-1 cannot size a SLURM request"):
        _ = make_cfg("hydra/launcher=slurm", "trainer=ddp", tiny=False).hydra.launcher.gpus_per_node


def test_fp16_on_cpu_is_a_user_error_and_bf16_works(make_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(UserError, match=r"trainer.precision=16-mixed .* needs a CUDA GPU.*bf16-mixed"):
        build_trainer(make_cfg("trainer.precision=16-mixed"), [], [])
    assert build_trainer(make_cfg("trainer.precision=bf16-mixed"), [], []).precision == "bf16-mixed"


def test_few_shot_subset_depends_on_split_seed_only() -> None:
    """BiT's protocol: every job with the same split seed trains on the same K images per class."""

    def train_indices(split_seed: int, global_seed: int) -> list[int]:
        torch.manual_seed(global_seed)  # what `seed=` does to the global RNGs
        data = make_data(
            ShapesDataModule, "shapes", train_size=200, test_size=20, examples_per_class=3, split_seed=split_seed
        )
        data.setup("fit")
        subset = data._splits["train"].dataset
        assert len(subset) == 3 * data.num_classes
        return list(subset.indices)

    assert train_indices(0, global_seed=1) == train_indices(0, global_seed=2)
    assert train_indices(0, global_seed=1) != train_indices(1, global_seed=1)


def test_tl_report_is_a_console_script() -> None:
    import transferlab.report

    assert 'tl-report = "transferlab.report:main"' in (ROOT / "pyproject.toml").read_text()
    assert callable(transferlab.report.main)


# -- tl-report on hand-made job directories (no training) -------------------------------------------------------
def fake_job(root: Path, overrides: list[str], metrics: dict[str, float] | None) -> None:
    job = root / ",".join(overrides)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        summary = {"metrics": metrics, "monitor": {"metric": "val/psnr", "mode": "max", "best": metrics["val/psnr"]}}
        (job / "metrics.json").write_text(json.dumps({**summary, "overrides": overrides}))


def test_report_mean_std_count_and_unfinished_jobs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = tmp_path / "sweep"
    for seed, psnr in ((0, 30.0), (1, 32.0), (2, 34.0)):
        fake_job(sweep, ["model.name=dncnn", f"seed={seed}"], {"val/psnr": psnr, "test/psnr": psnr - 1})
    fake_job(sweep, ["model.name=unet", "seed=0"], {"val/psnr": 35.0, "test/psnr": 34.0})
    fake_job(sweep, ["model.name=unet", "seed=1"], None)  # killed: no metrics.json

    text = report([str(sweep), "--plot", str(tmp_path / "psnr.png")])  # --x: the one swept key
    assert "| model.name | jobs | best val/psnr | test/psnr | val/psnr |" in text
    assert "| dncnn | 3/3 | 32.0000 ± 2.0000 (n=3) | 31.0000 ± 2.0000 (n=3) |" in text
    assert "| unet | 1/2 | 35.0000 (n=1) |" in text
    assert "status: 4 finished, 1 running or stopped" in text  # no squeue asked: a local sweep
    assert f"Unfinished jobs (no metrics.json yet):\n- {sweep / 'model.name=unet,seed=1'}: running or stopped" in text
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert [(r["model.name"], r["jobs"], r["finished"], r["val/psnr_n"]) for r in rows] == [
        ("dncnn", "3", "3", "3"),
        ("unet", "2", "1", "1"),
    ]
    assert (tmp_path / "psnr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Hand-made jobs have no TensorBoard events: no learning curves, one note, no crash.
    assert "Curves leave out 4 job(s) without TensorBoard events (logger=csv or none): model.name=dncnn,seed=0" in text
    assert not list(tmp_path.glob("psnr-curve-*"))
    assert (sweep / "report.md").read_text() == text.split("\n\nMarkdown: ")[0] + "\n"
    assert "![best val/psnr against model.name](../psnr.png)" in text
    with pytest.raises(UserError, match="not a directory"):
        report([str(tmp_path / "missing")])


def test_report_rows_follow_numeric_order(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for k in (20, 1, 10, 2, 5):
        for weights in ("null", "imagenet"):
            fake_job(sweep, [f"data.examples_per_class={k}", f"w={weights}"], {"val/psnr": float(k), "test/psnr": 1.0})
    rows = [
        line.split(" | ")[:2] for line in report([str(sweep)]).splitlines() if line.startswith("| ") and "/" in line
    ]
    assert [r[0].strip("| ") for r in rows[1::2]] == ["1", "2", "5", "10", "20"], rows


def test_report_plot_defaults_and_refusals(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for name, lr in (("dncnn", "0.1"), ("dncnn", "0.01"), ("unet", "0.1")):
        fake_job(sweep, [f"model.name={name}", f"model.lr={lr}", "seed=0"], {"val/psnr": 30.0, "test/psnr": 29.0})
    text = report([str(sweep), "--plot"])
    assert "No plot against a swept key: these jobs sweep model.lr, model.name; pass --x KEY to pick one." in text
    assert "against" not in text.split("pick one.")[1] and not (sweep / "report.png").exists()
    text = report([str(sweep), "--plot", "--x", "model.lr", "--plot-metric", "test/psnr"])
    assert "![test/psnr against model.lr](report.png)" in text  # --plot alone: next to the report
    assert (sweep / "report.png").read_bytes()[:4] == b"\x89PNG"
    seeds = tmp_path / "seeds"
    for seed in (0, 1):
        fake_job(seeds, ["model.name=dncnn", f"seed={seed}"], {"val/psnr": 30.0})
    assert "against" not in report([str(seeds), "--plot"])  # only seeds vary: learning curves alone
    assert not (seeds / "report.png").exists()


# -- a real 2×2 grid: killed after its first job, re-launched into the same directory ---------------------------
@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cwd = tmp_path_factory.mktemp("grid")
    sweep_dir = cwd / "outputs" / "multirun" / "grid"
    started = time.monotonic()
    log = cwd / "first_launch.log"
    first = start_cli("tl-train", "-m", *GRID, f"hydra.sweep.dir={sweep_dir}", cwd=cwd, log=log)
    kill_when(first, lambda: any(sweep_dir.glob("*/metrics.json")), log, "the first job")
    finished_before = {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")}
    relaunch = run_cli("tl-train", "-m", *GRID, f"hydra.sweep.dir={sweep_dir}", cwd=cwd)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    return {
        "cwd": cwd,
        "dir": sweep_dir,
        "finished_before": finished_before,
        "relaunch": relaunch,
        "seconds": time.monotonic() - started,
    }


@pytest.mark.slow
def test_grid_writes_readable_job_dirs_and_metrics(grid: dict) -> None:
    sweep_dir: Path = grid["dir"]
    assert {p.name for p in sweep_dir.iterdir() if p.is_dir()} == GRID_JOBS
    assert not (grid["cwd"] / "outputs" / "runs").exists() and not list(sweep_dir.rglob("version_*"))
    for name in GRID_JOBS:
        job = sweep_dir / name
        summary = json.loads((job / "metrics.json").read_text())
        assert sorted(summary["overrides"]) == sorted(name.split(","))
        assert {"monitor", "metrics", "epochs", "wall_time_s", "version"} <= set(summary)
        assert "test/acc" in summary["metrics"] and summary["monitor"]["best"] is not None
        assert list(job.glob("events.out.tfevents.*")) and (job / "checkpoints" / "best.ckpt").is_file()
        assert not (job / "checkpoints" / "last.ckpt").exists(), "finished jobs keep no resume state"


@pytest.mark.slow
def test_relaunch_runs_only_the_missing_jobs(grid: dict) -> None:
    finished_before: dict[str, int] = grid["finished_before"]
    assert 0 < len(finished_before) < 4, "the kill should have stopped the sweep midway"
    for name, mtime in finished_before.items():
        assert (grid["dir"] / name / "metrics.json").stat().st_mtime_ns == mtime, f"{name} ran again"
    stdout = grid["relaunch"].stdout
    assert stdout.count("Skipping finished job") == len(finished_before)
    assert stdout.count("Run directory:") == 4 - len(finished_before)


@pytest.mark.slow
def test_report_of_the_grid(grid: dict, tmp_path: Path) -> None:
    plot = tmp_path / "acc.png"
    args = [*REPORT, str(grid["dir"]), "--plot", str(plot)]  # x: the one swept key, data.examples_per_class
    result = run_cli(*args, "--plot-metric", "test/acc", cwd=grid["cwd"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 jobs in 2 groups (grouped by overrides except seed)" in result.stdout
    assert "common overrides: debug=tiny" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 2 |") or line.startswith("| 4 |")]
    assert len(rows) == 2 and all("| 2/2 |" in row and "(n=2)" in row for row in rows)
    assert "Unfinished" not in result.stdout
    table = list(csv.DictReader((grid["dir"] / "report.csv").open()))
    assert [(r["data.examples_per_class"], r["test/acc_n"]) for r in table] == [("2", "2"), ("4", "2")]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # The Markdown report (next to the CSV) shows the plot and the learning curves by relative links.
    markdown = (grid["dir"] / "report.md").read_text()
    links = re.findall(r"!\[(.*?)\]\((.*?)\)", markdown)
    assert [title for title, _ in links] == [
        "test/acc against data.examples_per_class",
        "val/acc per step",
        "train/loss per step",
        "val/loss per step",
    ]
    for _, link in links:
        assert not Path(link).is_absolute() and (grid["dir"] / link).read_bytes()[:4] == b"\x89PNG", link
    assert (grid["dir"] / links[2][1]).resolve() == tmp_path / "acc-curve-train_loss.png"


@pytest.mark.slow
def test_tensorboard_lists_each_job_with_hparams_and_final_metrics(grid: dict) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    board = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(grid["dir"]), "--host", "127.0.0.1"]
        + ["--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/data"

    def get(path: str, body: dict | None = None) -> object:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
        with urllib.request.urlopen(urllib.request.Request(url + path, data, headers), timeout=10) as response:
            return json.load(response)

    def runs_listed() -> bool:
        try:
            return set(get("/runs")) == GRID_JOBS  # type: ignore[arg-type]
        except OSError:
            return False

    try:
        wait_for(runs_listed, 90, "TensorBoard to list the 4 jobs")
        request = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"], "colParams": []}
        groups = get("/plugin/hparams/session_groups", {**request, "startIndex": 0, "sliceSize": 100})
    finally:
        board.terminate()
        board.wait(timeout=30)
    sessions = {group["name"]: group for group in groups["sessionGroups"]}  # type: ignore[index]
    assert set(sessions) == GRID_JOBS
    for name, group in sessions.items():
        overrides = dict(item.split("=") for item in name.split(","))
        hparams = group["hparams"]
        assert hparams["data.examples_per_class"] == float(overrides["data.examples_per_class"])
        assert hparams["seed"] == float(overrides["seed"]) and hparams["model.backbone.name"] == "mobilenet_v3_small"
        assert not [key for key, value in hparams.items() if "${" in str(value)], "hparams must be resolved"
        final = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        stored = json.loads((grid["dir"] / name / "metrics.json").read_text())["metrics"]
        assert final["final/test/acc"] == pytest.approx(stored["test/acc"], abs=1e-6)
        assert final["final/val/acc"] == pytest.approx(stored["val/acc"], abs=1e-6)


# -- learning curves of a real sweep: two seeds, three epochs ---------------------------------------------------
@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("seeds")
    sweep_dir = cwd / "sweep"
    args = ["-m", "debug=tiny", "trainer.max_epochs=3", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    result = run_cli("tl-train", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def raw_scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """`tag`'s points read straight from the event records (not through tl-report's reader)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    points = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == tag:
                    points[event.step] = float(tensor_util.make_ndarray(value.tensor))
    return points


@pytest.mark.slow
def test_learning_curves_average_the_seeds_step_by_step(seeds: Path) -> None:
    from transferlab.curves import mean_band, read_scalars

    jobs = sorted(p for p in seeds.iterdir() if (p / "metrics.json").is_file())
    assert len(jobs) == 2
    for tag in ("train/loss", "val/acc"):
        raw = [raw_scalars(job, tag) for job in jobs]
        assert [len(points) for points in raw] == [3, 3] and raw[0].keys() == raw[1].keys(), raw
        assert raw[0] != raw[1], "the seeds should differ, or the mean cannot be told from either run"
        curve = mean_band(tag, [read_scalars(job)[tag] for job in jobs])
        table = [[points[step] for step in sorted(points)] for points in raw]  # runs × steps
        assert curve.steps == sorted(raw[0]) and curve.runs == 2
        assert curve.mean == pytest.approx([(a + b) / 2 for a, b in zip(*table)], abs=1e-6)
        assert curve.low == pytest.approx([min(a, b) for a, b in zip(*table)], abs=1e-6)
        assert curve.high == pytest.approx([max(a, b) for a, b in zip(*table)], abs=1e-6)
        finals = [json.loads((job / "metrics.json").read_text())["metrics"][tag] for job in jobs]
        assert curve.mean[-1] == pytest.approx(sum(finals) / 2, abs=1e-6)  # the last point is the final metric


@pytest.mark.slow
def test_report_plot_of_seeds_draws_curves_only(seeds: Path, tmp_path: Path) -> None:
    result = run_cli(*REPORT, str(seeds), "--plot", "--curves", "train/loss,time/epoch_s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "![train/loss per step](report-curve-train_loss.png)" in result.stdout
    assert "![time/epoch_s per step](report-curve-time_epoch_s.png)" in result.stdout
    assert "against" not in result.stdout and not (seeds / "report.png").exists()  # nothing swept but seeds
    assert (seeds / "report-curve-time_epoch_s.png").read_bytes()[:4] == b"\x89PNG"
    typo = run_cli(*REPORT, str(seeds), "--plot", "--curves", "train/los", cwd=tmp_path)
    assert typo.returncode == 2 and "error: --curves: no job logged train/los. Did you mean train/loss" in typo.stderr


# -- Optuna and submitit ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_optuna_sweep_of_three_trials(tmp_path: Path) -> None:
    needs_extra("optuna")
    sweep_dir = tmp_path / "optuna"
    args = ["-m", "sweep=optuna", "debug=tiny", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep_dir}"]
    args.append("hydra.sweeper.pruner=null")  # pruning off: every trial runs to its end
    # The search space can be changed on the command line; here: only the small backbone, to keep it quick.
    result = run_cli("tl-train", *args, "model.backbone.name=choice(mobilenet_v3_small)", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    assert len(summaries) == 3
    for summary in summaries:
        sampled = dict(item.split("=", 1) for item in summary["overrides"])
        assert sampled["model.backbone.name"] == "mobilenet_v3_small"
        assert 1e-4 <= float(sampled["model.optimizer.lr"]) <= 0.03
        assert 1e-5 <= float(sampled["model.optimizer.weight_decay"]) <= 0.1
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(s["monitor"]["best"] for s in summaries))
    assert "Directions: ['maximize']" in result.stdout + result.stderr
    # The study is kept in the sweep directory (the jobs reported every epoch to it, pruning or not) ...
    assert sorted(s["optuna_trial"]["number"] for s in summaries) == [0, 1, 2]
    assert not any(s["optuna_trial"]["pruned"] for s in summaries)
    # ... and n_trials is its total: the same command again runs nothing.
    again = run_cli("tl-train", *args, "model.backbone.name=choice(mobilenet_v3_small)", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Trials: 3 of 3 done, 0 interrupted to re-run, 0 new" in again.stdout + again.stderr
    assert "Run directory:" not in again.stdout and len(list(sweep_dir.glob("*/metrics.json"))) == 3


# Learning rates that learn (0.01–0.03) and absurd ones (1–3: the loss explodes), one objective: val/loss.
# Optuna's sampler is seeded (by `seed`), so the trials' order is fixed: seed 9 samples 0.02, 3.0, 0.01, 2.0, 0.03.
PRUNING = [
    "-m",
    "sweep=optuna",
    "debug=tiny",
    "trainer.max_epochs=3",
    "monitor.metric=val/loss",
    "monitor.mode=min",
    "seed=9",
    "hydra.sweeper.n_trials=5",
    "hydra.sweeper.pruner.n_startup_trials=1",  # the median of the first (finished) trial is the bar
    "hydra.sweeper.pruner.n_warmup_steps=0",
    "model.optimizer.lr=choice(0.01,0.02,0.03,1.0,2.0,3.0)",
    "model.optimizer.weight_decay=0.0001",
    "model.finetune.backbone_lr_mult=1.0",
]


@pytest.mark.slow
def test_optuna_prunes_trials_clearly_worse_than_the_others(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna", reason='needs the [optuna] extra: pip install "transferlab[optuna]"')

    sweep_dir = tmp_path / "pruning"
    result = run_cli("tl-train", *PRUNING, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = {}
    for path in sweep_dir.glob("*/metrics.json"):
        summary = json.loads(path.read_text())
        summaries[summary["optuna_trial"]["number"]] = summary
    assert sorted(summaries) == [0, 1, 2, 3, 4]
    lr = {n: float(dict(o.split("=", 1) for o in s["overrides"])["model.optimizer.lr"]) for n, s in summaries.items()}
    assert len(set(lr.values())) == 5 and lr[0] < 1, lr  # the sampling the comment above describes
    pruned = {n for n, s in summaries.items() if s["optuna_trial"]["pruned"]}
    assert {n for n in lr if lr[n] >= 1} <= pruned and 0 not in pruned, (lr, pruned)  # absurd ones stopped early
    for n in pruned:
        assert (
            summaries[n]["epochs"] < 3 and summaries[n]["optuna_trial"]["pruned_at_epoch"] == summaries[n]["epochs"] - 1
        )
        # a pruned job ends normally: tested, metrics.json written; at lr 3 the test loss may be infinite, which
        # metrics.json then says by name instead of dropping it
        assert "test/acc" in summaries[n]["metrics"]
        assert "test/loss" in summaries[n]["metrics"] or summaries[n]["non_finite_metrics"]["test/loss"] in (
            "inf",
            "nan",
        )
    for n in set(summaries) - pruned:
        assert summaries[n]["epochs"] == 3 and summaries[n]["optuna_trial"]["pruned_at_epoch"] is None
    # The study the sweeper and the jobs shared: pruned trials are PRUNED (not COMPLETE with a bad value), with
    # every epoch's value their job reported; the best trial is a finished one.
    study = optuna.load_study(study_name="debug", storage=open_storage(str(sweep_dir / "optuna.db")))
    states = {t.number: t.state for t in study.trials}
    assert {n for n, state in states.items() if state == optuna.trial.TrialState.PRUNED} == pruned
    assert {n for n, state in states.items() if state == optuna.trial.TrialState.COMPLETE} == set(summaries) - pruned
    assert all(len(t.intermediate_values) == summaries[t.number]["epochs"] for t in study.trials)
    assert study.best_trial.number not in pruned
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["pruned_trials"] == len(pruned) and results["best_value"] == study.best_value
    # tl-report counts them and says which.
    report_run = run_cli(*REPORT, str(sweep_dir), cwd=tmp_path)
    assert report_run.returncode == 0, report_run.stderr[-3000:]
    assert f"Pruned by Optuna: {len(pruned)} of 5 trials" in report_run.stdout
    rows = list(csv.DictReader((sweep_dir / "report.csv").open()))
    assert sorted(int(r["pruned"]) for r in rows) == sorted(int(n in pruned) for n in summaries)


@pytest.mark.slow
def test_submitit_local_launcher_runs_the_job(tmp_path: Path) -> None:
    needs_extra("slurm")
    sweep_dir = tmp_path / "submitit"
    args = ["-m", "hydra/launcher=submitit_local", "debug=tiny", "seed=3", f"hydra.sweep.dir={sweep_dir}"]
    result = run_cli("tl-train", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((sweep_dir / "debug=tiny,seed=3" / "metrics.json").read_text())["overrides"][-1] == "seed=3"
    assert list((sweep_dir / ".submitit").rglob("*_result.pkl")), "the job ran in a submitit worker process"


# -- resume -----------------------------------------------------------------------------------------------------
def test_unfinished_job_resumes_from_last_checkpoint(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg("callbacks.early_stopping=null", KEEP_LAST)
    job_dir = Path(cfg.paths.output_dir)
    run(cfg)
    steps_per_epoch = json.loads((job_dir / "metrics.json").read_text())["global_step"]
    (job_dir / "metrics.json").unlink()  # as if the job had been killed after its first epoch
    run(make_cfg("callbacks.early_stopping=null", "trainer.max_epochs=2"))
    summary = json.loads((job_dir / "metrics.json").read_text())
    assert summary["resumed_from"] == str(job_dir / "checkpoints" / "last.ckpt")
    assert summary["epochs"] == 2 and summary["global_step"] == 2 * steps_per_epoch


@pytest.mark.parametrize(
    ("name", "swept"),
    [
        ("scratch_vs_transfer", {"model.backbone.weights", "seed"}),
        ("finetune_modes", {"model.finetune.mode", "seed"}),
        ("fewshot_transfer", {"data.examples_per_class", "model.backbone.weights", "seed"}),
        ("contrast_augmentation", {"data/augment", "seed"}),
    ],
)
def test_experiment_recipes_are_sweeps_over_seeds(make_cfg: Callable[..., DictConfig], name: str, swept: set) -> None:
    cfg = make_cfg(f"experiment={name}", "++source_weights=/runs/source/best.ckpt", tiny=False)
    params = cfg.hydra.sweeper.params
    assert set(params) == swept and params.seed == "0,1,2"
    if "model.backbone.weights" in params:
        assert params["model.backbone.weights"] == "null,/runs/source/best.ckpt"
    if name == "finetune_modes":
        assert cfg.model.backbone.weights == "/runs/source/best.ckpt"
