"""Experiment trackers, run through the real CLI: MLflow read back with its own client, W&B offline read back
from its run file, several loggers at once, and the one-line error when a tracker is not installed."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pytest
import pytorch_lightning as pl
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from conftest import TINY, needs_extra, run_cli
from transferlab.loggers import (
    STOPPED,
    LoggerAdapter,
    TensorBoardAdapter,
    adapter_for,
    exit_code,
    log_final_metrics,
    start_runs,
    wandb_logger,
)
from transferlab.runner import build
from transferlab.utils.errors import UserError

LOGGED = [*TINY, "trainer.log_every_n_steps=1"]
EXPERIMENT = "transferlab-train"  # transferlab-${task_name}
# Console lines that are no tracker's: Lightning's hint on a machine where `srun` exists (the SLURM tests
# install it) comes with every run.
ELSEWHERE = ("srun",)


def summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "metrics.json").read_text())


def final_metrics(job_dir: Path) -> dict[str, float]:
    return summary(job_dir)["metrics"]


def job_dirs(root: Path) -> list[Path]:
    return sorted(path.parent for path in root.glob("outputs/**/metrics.json"))


def assert_console_is_transferlab_only(output: str) -> None:
    """Only transferlab's own lines (and Hydra's sweep lines): nothing from MLflow, alembic, W&B or Lightning."""
    own = ("transferlab: ", "inputs: ", "epoch ", "test: ", "Run directory: ")
    foreign = [
        line
        for line in output.splitlines()
        if line.strip() and not line.startswith(own) and "[HYDRA]" not in line and not any(w in line for w in ELSEWHERE)
    ]
    assert not foreign, foreign


@pytest.fixture
def no_tracker_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No W&B login, no tracker settings from the environment; W&B's caches under tmp_path. Every test that runs
    a tracker takes this fixture: without the [trackers] extra it skips them, saying so."""
    needs_extra("trackers")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_PROJECT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))


# -- MLflow ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_mlflow_sweep_runs_side_by_side_with_metrics_params_and_images(tmp_path: Path, no_tracker_credentials) -> None:
    """Two jobs of a sweep: one SQLite store under outputs/, one experiment, one run per job named after its
    directory and tagged with its sweep and its tags, with the job's final metrics, its config as params, and
    its figures as PNG artifacts."""
    from mlflow.tracking import MlflowClient

    result = run_cli("tl-train", "-m", *LOGGED, "logger=mlflow", "seed=0,1", "tags=[baseline]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_console_is_transferlab_only(result.stdout + result.stderr)

    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = {run.data.tags["transferlab.run_dir"]: run for run in client.search_runs([experiment.experiment_id])}
    jobs = job_dirs(tmp_path)
    assert len(jobs) == 2 and sorted(runs) == [str(job) for job in jobs]
    for job in jobs:
        run = runs[str(job)]
        assert run.info.status == "FINISHED"
        assert run.info.run_name == str(job.relative_to(tmp_path / "outputs"))  # multirun/<date>/<time>/<job>
        assert run.data.tags["transferlab.sweep"] == str(job.parent.relative_to(tmp_path / "outputs"))
        assert run.data.tags["baseline"] == "true"
        metrics = final_metrics(job)
        assert {"val/acc", "val/loss", "train/loss", "test/acc"} <= set(metrics)
        assert {key: run.data.metrics[key] for key in metrics} == pytest.approx(metrics, rel=1e-6, abs=1e-9)
        steps = client.get_metric_history(run.info.run_id, "train/loss_step")
        assert len(steps) == summary(job)["global_step"] > 1  # every step (log_every_n_steps=1)
        assert run.data.params["model.backbone.name"] == "mobilenet_v3_small"
        (seed,) = [o.removeprefix("seed=") for o in summary(job)["overrides"] if o.startswith("seed=")]
        assert run.data.params["seed"] == seed
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
        assert {path.split("+")[0] for path in images} == {
            "images/val~confusion_matrix",
            "images/test~confusion_matrix",
        }
        png = Image.open(client.download_artifacts(run.info.run_id, images[0], str(tmp_path / "dl")))
        assert png.format == "PNG" and min(png.size) > 100


# -- W&B ---------------------------------------------------------------------------------------------
def wandb_records(path: Path) -> Iterator[object]:
    """The records of a ``.wandb`` run file: W&B's header, then LevelDB-log framing (32 KiB blocks of chunks
    with a 7-byte header: checksum, length, type), each record one of W&B's own protobuf messages."""
    from wandb.proto import wandb_internal_pb2

    block, data = 32768, path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    position, pending = 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or (kind == 0 and length == 0):  # the rest of a block is zero padding
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@dataclass
class WandbRun:
    """What an offline run directory's run file holds. W&B nests an image's fields under its key
    (``val/confusion_matrix.filenames``)."""

    last: dict[str, object] = field(default_factory=dict)  # each history key's last value
    config: dict[str, object] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # the display name of each run record
    tags: list[str] = field(default_factory=list)  # of the last run record
    groups: set[str] = field(default_factory=set)
    exit_code: int | None = None
    config_before_history: bool = False  # the config was recorded before the first metric


def wandb_run(run_dir: Path) -> WandbRun:
    run = WandbRun()
    history_seen = False
    for record in wandb_records(next(run_dir.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history_seen = True
            for item in record.history.item:
                run.last[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "config":
            run.config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            run.config_before_history |= "model.backbone.name" in run.config and not history_seen
        elif kind == "run":
            run.names.append(record.run.display_name)
            run.tags = list(record.run.tags)
            run.groups.add(record.run.run_group)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


@pytest.mark.slow
def test_wandb_offline_runs_have_metrics_config_and_images(tmp_path: Path, no_tracker_credentials) -> None:
    """Without a login W&B runs offline: each job of a sweep has its own run file under its run directory,
    holding every final metric of its metrics.json, its config, its tags, the sweep's group, its figures
    (wandb.Image files) and exit code 0; the console stays transferlab's."""
    result = run_cli("tl-train", "-m", *LOGGED, "logger=wandb", "seed=0,1", "tags=[baseline,lr-scan]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_console_is_transferlab_only(result.stdout + result.stderr)
    jobs = job_dirs(tmp_path)
    assert len(jobs) == 2
    for job in jobs:
        (run_dir,) = (job / "wandb").glob("offline-run-*")  # one run per job, never one shared by the sweep
        run = wandb_run(run_dir)
        last, config, names = run.last, run.config, run.names
        metrics = final_metrics(job)
        assert {key: last[key] for key in metrics} == pytest.approx(metrics, rel=1e-6, abs=1e-9)
        (seed,) = [o.removeprefix("seed=") for o in summary(job)["overrides"] if o.startswith("seed=")]
        assert config["model.backbone.name"] == "mobilenet_v3_small" and config["seed"] == int(seed)
        assert set(names) == {str(job.relative_to(tmp_path / "outputs"))}
        assert run.groups == {str(job.parent.relative_to(tmp_path / "outputs"))}  # multirun/<date>/<time>
        assert run.tags == ["baseline", "lr-scan"] and run.exit_code == 0
        for stage in ("val", "test"):
            (image,) = last[f"{stage}/confusion_matrix.filenames"]
            assert Image.open(BytesIO((run_dir / "files" / image).read_bytes())).format == "PNG"


@pytest.mark.parametrize(
    ("environment", "netrc_host", "expected"),
    [
        ({}, None, "offline"),
        ({"WANDB_API_KEY": "x" * 40}, None, "online"),
        ({}, "api.wandb.ai", "online"),
        ({}, "elsewhere.example", "offline"),
        ({"WANDB_BASE_URL": "https://wandb.mine.example"}, "wandb.mine.example", "online"),
        ({"WANDB_MODE": "disabled"}, "api.wandb.ai", None),  # W&B reads WANDB_MODE itself
    ],
)
def test_wandb_is_offline_unless_logged_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_tracker_credentials, environment, netrc_host, expected
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    if netrc_host is not None:
        netrc_file = tmp_path / "netrc"
        netrc_file.write_text(f"machine {netrc_host}\n  login user\n  password {'k' * 40}\n")
        netrc_file.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc_file))
    logger = wandb_logger(project="p", save_dir=str(tmp_path / "run"), name="run")
    assert logger._wandb_init.get("mode") == expected
    assert "anonymous" not in logger._wandb_init  # Lightning's None makes W&B print a deprecation line
    chosen = wandb_logger(project="p", save_dir=str(tmp_path / "run"), name="run", mode="offline")
    assert chosen._wandb_init["mode"] == "offline"


# -- several at once ---------------------------------------------------------------------------------
DENOISE = [
    "data=photos",
    "data.patch_size=32",
    "data.batch_size=4",
    "data.train_patches=16",
    "data.val_patches=4",
    "model=denoise",
    "data/degrade=gaussian_noise",
    "model.net.depth=4",
    "model.net.channels=8",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
]


@pytest.mark.slow
def test_many_loggers_each_get_metrics_and_the_image_grid(tmp_path: Path, no_tracker_credentials) -> None:
    """logger=many (TensorBoard + CSV + MLflow) on a denoiser: every sink has the final metrics; TensorBoard
    and MLflow also have the validation grid (degraded | restored | clean)."""
    import csv

    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_cli("tl-train", *DENOISE, "logger=many", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_console_is_transferlab_only(result.stdout + result.stderr)
    (job,) = job_dirs(tmp_path)
    metrics = final_metrics(job)
    assert {"val/psnr", "val/ssim", "test/psnr", "train/loss"} <= set(metrics)

    events = EventAccumulator(str(job), size_guidance={"images": 0, "scalars": 0}).Reload()
    tensorboard = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    assert {key: tensorboard[key] for key in metrics} == pytest.approx(metrics, rel=1e-6)
    (grid,) = events.Images("val/degraded_restored_clean")
    assert grid.width == 3 * 32 + 4 * 2

    rows = list(csv.DictReader((job / "metrics.csv").open()))
    written = {key: float(row[key]) for row in rows for key in metrics if row.get(key)}
    assert written == pytest.approx(metrics, rel=1e-6)

    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert {key: run.data.metrics[key] for key in metrics} == pytest.approx(metrics, rel=1e-6, abs=1e-9)
    grids = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    assert [path.split("+")[0] for path in grids] == ["images/val~degraded_restored_clean"]
    png = Image.open(client.download_artifacts(run.info.run_id, grids[0], str(tmp_path / "dl")))
    assert png.size == (grid.width, grid.height)


# -- adapters and missing packages -------------------------------------------------------------------
def test_each_logger_kind_gets_its_adapter(tmp_path: Path) -> None:
    class MyTensorBoard(TensorBoardLogger):
        pass

    assert type(adapter_for(MyTensorBoard(str(tmp_path)))) is TensorBoardAdapter  # subclasses too
    assert type(adapter_for(CSVLogger(str(tmp_path)))) is LoggerAdapter  # scalars only


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_missing_tracker_is_one_line_with_the_install_command(
    make_cfg, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    cfg = make_cfg(f"logger={name}")
    monkeypatch.setitem(sys.modules, name, None)  # `import mlflow` now raises ImportError
    with pytest.raises(
        UserError, match=rf"^logger={name} needs the '{name}' package\. .*pip install 'transferlab\[trackers\]'$"
    ):
        build(cfg.logger[name], f"logger.{name}")


# -- visible from the start, ended as it ended ---------------------------------------------------------
def tensorboard_hparams(job_dir: Path) -> tuple[dict[str, object], list[str], int | None]:
    """(the config of the HPARAMS session start, the metrics of its experiment, the session end's status or
    None) in a job directory's TensorBoard events, as TensorBoard reads them (the first of each kept)."""
    from google.protobuf.json_format import MessageToDict
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    content = EventAccumulator(str(job_dir)).Reload().PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    params = {name: MessageToDict(value) for name, value in start.hparams.items()}
    experiment = content.get(metadata.EXPERIMENT_TAG)
    metrics = [m.name.tag for m in metadata.parse_experiment_plugin_data(experiment).metric_infos] if experiment else []
    end = content.get(metadata.SESSION_END_INFO_TAG)
    return params, metrics, metadata.parse_session_end_info_plugin_data(end).status if end else None


SEEN: dict[str, object] = {}  # what `LookAtTrackers` found in the trackers' stores


class LookAtTrackers(pl.Callback):
    """When training starts, read the run back from TensorBoard's event files and MLflow's store into `SEEN`,
    then stop the run: with an exception (``then=error``), or as a SIGTERM does (``then=sigterm``: at the end
    of the first step, its metrics logged)."""

    def __init__(self, then: str) -> None:
        self.then = then

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                SEEN["tensorboard"] = tensorboard_hparams(Path(logger.log_dir))
            elif isinstance(logger, MLFlowLogger):
                SEEN["mlflow"] = logger.experiment.get_run(logger.run_id)  # a query of the store
        if self.then == "error":
            raise RuntimeError("crashed on purpose")
        trainer._signal_connector.received_sigterm = True


@pytest.mark.parametrize(("then", "status", "exit_code"), [("error", "FAILED", 1), ("sigterm", "KILLED", 143)])
def test_trackers_hold_config_and_tags_from_the_start_and_mark_a_stopped_run(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_tracker_credentials, then, status, exit_code
) -> None:
    """Before the first step, TensorBoard's HPARAMS session and the MLflow run hold the config and the tags;
    W&B has them before its first metric. A crashed run ends FAILED in MLflow and with exit code 1 in W&B, a
    killed one KILLED and 143; TensorBoard gets no end (a resumed job may still end it as a success)."""
    from transferlab.train import run

    monkeypatch.setenv("TRANSFERLAB_ROOT", str(tmp_path))
    SEEN.clear()
    cfg = make_cfg(
        "logger=[tensorboard,mlflow,wandb]",
        "tags=[baseline,lr-scan]",
        "trainer.log_every_n_steps=1",
        "+callbacks.look._target_=test_loggers.LookAtTrackers",
        f"+callbacks.look.then={then}",
    )
    with pytest.raises(RuntimeError if then == "error" else SystemExit) as stopped:
        run(cfg)
    assert then == "error" or stopped.value.code == exit_code

    params, metrics, end = SEEN["tensorboard"]
    assert params["tags"] == "baseline,lr-scan" and params["model.backbone.name"] == "mobilenet_v3_small"
    assert params["seed"] == 0
    assert metrics == [] and end is None
    assert tensorboard_hparams(Path(cfg.paths.output_dir))[1:] == ([], None)  # no end written since

    seen = SEEN["mlflow"]
    assert seen.info.status == "RUNNING"
    assert seen.data.params["model.backbone.name"] == "mobilenet_v3_small" and seen.data.params["seed"] == "0"
    assert {"baseline": "true", "lr-scan": "true"}.items() <= seen.data.tags.items()
    assert "transferlab.sweep" not in seen.data.tags  # a single run has no group
    from mlflow.tracking import MlflowClient

    (ended,) = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow/mlflow.db").search_runs(["1"])
    assert ended.info.status == status

    (run_dir,) = (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")
    wandb = wandb_run(run_dir)
    assert wandb.config["model.backbone.name"] == "mobilenet_v3_small"
    assert wandb.config["tags"] == ["baseline", "lr-scan"]
    assert wandb.tags == ["baseline", "lr-scan"] and wandb.groups == {""}
    assert wandb.exit_code == exit_code
    if then == "sigterm":
        assert "trainer/global_step" in wandb.last and wandb.config_before_history  # a step's metrics came after


def test_a_finished_run_adds_its_final_metrics_to_tensorboard_hparams(make_cfg, tmp_path: Path) -> None:
    """The session started with the config ends as a success with the final metrics (``final/…``, the values
    of metrics.json), which the HPARAMS tab shows next to the config."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from transferlab.train import run

    cfg = make_cfg("logger=tensorboard", "tags=[baseline]")
    run(cfg)
    job = Path(cfg.paths.output_dir)
    params, metrics, end = tensorboard_hparams(job)
    assert params["tags"] == "baseline" and end == 1  # STATUS_SUCCESS
    stored = final_metrics(job)
    assert {"final/val/acc", "final/test/acc", "final/train/loss"} <= set(metrics)
    assert set(metrics) == {f"final/{name}" for name in stored if "/acc_class/" not in name}
    events = EventAccumulator(str(job)).Reload()
    assert events.Scalars("final/test/acc")[-1].value == pytest.approx(stored["test/acc"], abs=1e-6)


def test_tensorboard_hparams_start_with_the_config_and_end_with_the_final_metrics(tmp_path: Path) -> None:
    """Each part is in the event file once sent; a list (the tags) reads ``a,b``, a null ``None``."""
    logger = TensorBoardLogger(str(tmp_path), name="", version="", default_hp_metric=False)
    start_runs([logger], {"seed": 3, "tags": ["a", "b"], "model.head_hidden": None}, ["a", "b"])
    assert tensorboard_hparams(tmp_path) == ({"seed": 3, "tags": "a,b", "model.head_hidden": "None"}, [], None)
    log_final_metrics([logger], {"final/val/acc": 0.5})
    assert tensorboard_hparams(tmp_path)[1:] == (["final/val/acc"], 1)


def _ctrl_c_exit() -> SystemExit:
    """Lightning's answer to a Ctrl-C in fit: ``sys.exit(1)`` raised while handling the KeyboardInterrupt."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemExit(1)  # noqa: B904 (the implicit context is what Lightning leaves)
    except SystemExit as stop:
        return stop


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (None, 0),
        (SystemExit(0), 0),
        (SystemExit(None), 0),
        (RuntimeError("crash"), 1),
        (SystemExit("a message"), 1),
        (SystemExit(2), 2),  # a user error
        (SystemExit(143), 143),  # train.py's answer to SIGTERM
        (SIGTERMException(), 143),
        (KeyboardInterrupt(), 130),
        (_ctrl_c_exit(), 130),
    ],
)
def test_the_exit_code_trackers_get_tells_a_stopped_run_from_a_failed_one(error, code: int) -> None:
    assert exit_code(error) == code
    assert (code in STOPPED) == (code in (130, 143))


@pytest.mark.parametrize("single", [True, False])
def test_a_sweeps_jobs_share_a_group_named_after_the_sweep_directory(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_tracker_credentials, single: bool
) -> None:
    """In a sweep, MLflow runs are tagged transferlab.sweep=<sweep dir> and W&B runs get it as their group (named
    like the runs: relative to outputs/); a single run has neither; logger.<name>.group=… chooses one."""
    from omegaconf import open_dict

    monkeypatch.setenv("TRANSFERLAB_ROOT", str(tmp_path))
    sweep = tmp_path / "outputs" / "multirun" / "2026-01-02" / "03-04-05-000006"
    multirun = [] if single else ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep}"]
    cfg = make_cfg("logger=[mlflow,wandb]", *multirun)
    expected = None if single else "multirun/2026-01-02/03-04-05-000006"

    mlflow = build(cfg.logger.mlflow, "logger.mlflow")
    assert mlflow.experiment.get_run(mlflow.run_id).data.tags.get("transferlab.sweep") == expected
    assert build(cfg.logger.wandb, "logger.wandb")._wandb_init["group"] == expected
    with open_dict(cfg):
        cfg.logger.wandb.group = "lr-study"
    assert build(cfg.logger.wandb, "logger.wandb")._wandb_init["group"] == "lr-study"


@pytest.mark.parametrize(
    ("tags", "accepted"),
    [
        ([], True),
        (["baseline", "lr-scan", "v1.2", "ablation:head", "2024_runs"], True),
        ("baseline", False),  # tags=baseline: a string, not a list
        ([2024], False),  # a number: quote it
        (["two words"], False),
        (["a/b"], False),
        (["-x"], False),
        (["x" * 65], False),
        (["mlflow.runName"], False),  # MLflow's own tags
        (["transferlab.sweep"], False),
    ],
)
def test_tags_are_names_every_tracker_takes(tags: object, accepted: bool) -> None:
    from omegaconf import OmegaConf

    from transferlab.utils.checks import check_values

    cfg = OmegaConf.create({"tags": tags})
    if accepted:
        check_values(cfg)
    else:
        with pytest.raises(UserError, match=r"^tags must be a list of names .*, got .*\. Pass tags=<value>$"):
            check_values(cfg)
