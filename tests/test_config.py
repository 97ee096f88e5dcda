"""Every config in every group composes, and what it describes instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import TINY_PHOTOS, needs_extra
from test_data import write_cifar
from transferlab.runner import instantiate_named
from transferlab.utils.config import config_dir

CONF = config_dir()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_config_dir_is_the_repo_conf() -> None:
    assert (CONF / "train.yaml").is_file() and (CONF / "eval.yaml").is_file()


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_instantiate(make_cfg, name: str, tmp_path: Path) -> None:
    # A number, not the folder-derived size: the folder is empty, and instantiating reads no image.
    extra = [f"data.root={tmp_path}", "data.image_size=64"] if name == "imagefolder" else []
    cfg = make_cfg(f"data={name}", *extra, tiny=False)
    datamodule = instantiate(cfg.data)
    assert datamodule.batch_size == cfg.data.batch_size


@pytest.mark.parametrize("preset", options("data/augment"))
def test_augment_presets_keep_uint8_images_batchable(make_cfg, preset: str) -> None:
    import torch

    cfg = make_cfg(f"data/augment={preset}", "data.image_size=32", tiny=False)
    augment = instantiate(cfg.data.augment)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    out = augment(image)
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)


def task_args(cfg) -> dict:
    """What train.py passes from the data: classifiers get class counts (no dataset needed for that here),
    the other tasks whatever their datamodule derives (restoration: scale and mask channel)."""
    if cfg.model._target_.endswith("ClassificationTask"):
        return {"num_classes": 10, "class_names": [str(i) for i in range(10)]}
    return instantiate(cfg.data).task_args()


# Image-to-image models train on photo patches; the data config they are composed with in the test.
MODEL_DATA = {
    "denoise": ["data=photos", "data/degrade=gaussian_noise"],
    "restore_unet": ["data=photos", "data/degrade=inpaint_box"],
    "super_resolution": ["data=photos", "data/degrade=downscale"],
    "style_transfer": ["data=photos", "model.style_size=32"],
    "adain": ["data=photos", "model.style_size=32"],
}


@pytest.mark.parametrize("name", options("model"))
def test_model_configs_instantiate(make_cfg, name: str) -> None:
    cfg = make_cfg(f"model={name}", *MODEL_DATA.get(name, []), tiny=name not in MODEL_DATA)
    model = instantiate(cfg.model, **task_args(cfg))
    assert sum(p.numel() for p in model.parameters()) > 0
    assert cfg.monitor.metric.startswith("val/")  # each model config leaves a metric its task logs


@pytest.mark.parametrize("name", [n for n in options("trainer") if n not in ("gpu", "ddp")])
def test_cpu_trainer_configs_instantiate(make_cfg, name: str) -> None:
    cfg = make_cfg(f"trainer={name}", tiny=False)
    trainer = instantiate(cfg.trainer)
    assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("name", ["gpu", "ddp"])
def test_gpu_trainer_configs_compose(make_cfg, name: str) -> None:
    cfg = make_cfg(f"trainer={name}", tiny=False)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"


LOGGER_KINDS = {
    "none": [],
    "tensorboard": ["TensorBoardLogger"],
    "csv": ["CSVLogger"],
    "mlflow": ["MLFlowLogger"],
    "wandb": ["WandbLogger"],
    "many": ["TensorBoardLogger", "CSVLogger", "MLFlowLogger"],
}


@pytest.mark.parametrize("name", options("logger"))
def test_logger_configs_instantiate(make_cfg, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for kind, module in (("MLFlowLogger", "mlflow"), ("WandbLogger", "wandb")):
        if kind in LOGGER_KINDS[name]:
            needs_extra("trackers", module)
    cfg = make_cfg(f"logger={name}")
    loggers = instantiate_named(cfg.get("logger"))
    assert [type(logger).__name__ for logger in loggers] == LOGGER_KINDS[name]
    for logger in loggers:
        if type(logger).__name__ == "MLFlowLogger":  # one store for every run under outputs/
            assert logger._tracking_uri == f"sqlite:///{cfg.paths.log_dir}/mlflow/mlflow.db"
        else:  # files straight in the run directory: no name/version_N nesting
            assert Path(logger.log_dir or logger.save_dir) == Path(cfg.paths.output_dir)


@pytest.mark.parametrize("name", options("callbacks"))
def test_callback_configs_instantiate(make_cfg, name: str) -> None:
    cfg = make_cfg(f"callbacks={name}")
    callbacks = instantiate_named(cfg.get("callbacks"))
    for callback in callbacks:
        if hasattr(callback, "monitor") and callback.monitor is not None:
            assert callback.monitor == cfg.monitor.metric  # read from the single root key


@pytest.mark.parametrize("name", options("debug"))
def test_debug_configs_compose(make_cfg, name: str) -> None:
    cfg = make_cfg(f"debug={name}")
    assert cfg.trainer.accelerator == "cpu" and cfg.task_name == "debug"
    instantiate(cfg.trainer)


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_configs_compose_and_instantiate(make_cfg, name: str, tmp_path: Path) -> None:
    # Pretrained weights cannot be downloaded here: instantiate with random init instead.
    cfg = make_cfg(f"experiment={name}", tiny=False)
    if "backbone" in cfg.model:
        cfg = make_cfg(f"experiment={name}", *random_init(cfg), tiny=False)
    instantiate(cfg.data)
    instantiate(cfg.model, **task_args(cfg))
    instantiate(cfg.trainer)


def random_init(cfg) -> list[str]:
    """Source weights off (no downloads, no source run), and so no layer-wise transfer from them either."""
    layers = ["model.backbone.transfer_layers=null"] if "transfer_layers" in cfg.model.backbone else []
    return ["model.backbone.weights=null", *layers]


def stand_ins(cfg, tmp_path: Path) -> list[str]:
    """Overrides that keep an experiment's data, model and task but make them tiny and offline: CIFAR batches
    written in the real format, few shapes or photo patches, source weights off (full mode has its own test)."""
    data = cfg.data._target_.rsplit(".", 1)[-1]
    if data == "CIFARDataModule":
        write_cifar(tmp_path / "cifar", cfg.data.variant)
        overrides = [f"data.root={tmp_path / 'cifar'}", "data.batch_size=8", "data.image_size=32"]
    elif data == "ShapesDataModule":
        overrides = ["data.train_size=60", "data.test_size=20", "data.batch_size=8", "data.image_size=32"]
        overrides.append("data.examples_per_class=null")
    else:
        overrides = [o for o in TINY_PHOTOS if not o.startswith("data=")]
    if "backbone" in cfg.model:
        overrides += random_init(cfg)
    if "style_size" in cfg.model:
        overrides.append("model.style_size=32")
    return [*overrides, "logger=none", "trainer.detect_anomaly=false"]


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_runs_a_fast_dev_run(make_cfg, name: str, tmp_path: Path) -> None:
    """Each recipe trains, validates and tests one batch with its own data module, model and task."""
    from transferlab.train import run

    composed = make_cfg(f"experiment={name}", tiny=False)
    cfg = make_cfg(f"experiment={name}", "debug=fdr", *stand_ins(composed, tmp_path), tiny=False, out="fdr")
    run(cfg)
    assert (Path(cfg.paths.output_dir) / "metrics.json").is_file()


def test_monitor_lives_in_one_key(make_cfg) -> None:
    cfg = make_cfg("monitor.metric=val/loss", "monitor.mode=min")
    callbacks = {type(c).__name__: c for c in instantiate_named(cfg.callbacks)}
    assert callbacks["ModelCheckpoint"].monitor == "val/loss" and callbacks["ModelCheckpoint"].mode == "min"
    assert callbacks["EarlyStopping"].monitor == "val/loss" and callbacks["EarlyStopping"].mode == "min"


def test_eval_config_composes(make_cfg) -> None:
    cfg = make_cfg("ckpt_path=/some.ckpt", name="eval")
    assert cfg.get("data") is None and cfg.ckpt_path == "/some.ckpt"
    cfg = make_cfg("ckpt_path=/some.ckpt", "data=cifar10", name="eval")
    assert cfg.data.variant == 10


def test_targets_point_into_the_package() -> None:
    for path in CONF.rglob("*.yaml"):
        for line in path.read_text().splitlines():
            if "_target_:" in line:
                target = line.split("_target_:")[1].strip()
                assert not target.startswith("src."), f"{path}: {target}"


def test_named_callback_can_be_switched_off(make_cfg) -> None:
    cfg = make_cfg("callbacks.early_stopping=null")
    names = {type(c).__name__ for c in instantiate_named(cfg.callbacks)}
    assert "EarlyStopping" not in names and "ModelCheckpoint" in names


def test_data_dir_follows_environment(make_cfg, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRANSFERLAB_DATA", str(tmp_path / "datasets"))
    cfg = make_cfg("data=cifar10", tiny=False)
    assert cfg.data.root == str(tmp_path / "datasets" / "cifar")


def test_optional_local_config_is_applied(make_cfg, tmp_path: Path) -> None:
    """`local/default.yaml` on the search path is merged; the test's own one, never the source tree's."""
    (tmp_path / "extra" / "local").mkdir(parents=True)
    (tmp_path / "extra" / "local" / "default.yaml").write_text("# @package _global_\nseed: 1234\n")
    assert make_cfg(f"hydra.searchpath=[file://{tmp_path / 'extra'}]", tiny=False).seed == 1234
    if not (CONF / "local" / "default.yaml").exists():
        assert make_cfg(tiny=False).seed == 0
