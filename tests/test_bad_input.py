"""The bad-input matrix: every CLI, run as a user runs it, on a wrong value, name, file or path.

Each case must end with exit status 2 and exactly one line ``error: <what>. <how to fix>`` naming the
problem, no traceback, and nothing left behind that looks like a finished run (no ``metrics.json``, no
checkpoint). Config mistakes are answered before torch is imported (`transferlab.cli.preflight`), so
they are cheap; mistakes that need the data, the weights or a checkpoint opened run in the slow part.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from conftest import TINY, TINY_PHOTOS, needs_extra, run_cli
from test_data import write_cifar

PREDICT = ["ckpt_path=missing.ckpt", "input=."]  # the value errors come before the missing file

# (command, arguments, the start of the error line). "{tmp}" is the test's temporary directory.
CONFIG_CASES = [
    ("tl-train", ["data=nosuch"], "error: no data config named 'nosuch'. Available: cifar10, cifar100"),
    ("tl-train", ["model=clasifier"], "error: no model config named 'clasifier'. Available: adain"),
    ("tl-train", ["experiment=nosuch"], "error: no experiment config named 'nosuch'"),
    ("tl-train", ["trainer=gpus"], "error: no trainer config named 'gpus'. Available: cpu, ddp, ddp_sim"),
    ("tl-train", ["data/augment=flips"], "error: no data/augment config named 'flips'"),
    ("tl-train", ["dta=shapes"], "error: unknown key dta. Did you mean data"),
    ("tl-train", ["trainer.max_step=3"], "error: unknown key trainer.max_step. Did you mean trainer.max_steps"),
    ("tl-train", ["model.backbone.nam=x"], "error: unknown key model.backbone.nam. Did you mean model.backbone.name"),
    ("tl-train", ["+seed=3"], "error: seed is already in the config. Override it without the +"),
    (
        "tl-train",
        ["-m", "hydra/launcher=slurm", "trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=-1"],
        "error: hydra.launcher.gpus_per_node: trainer.devices=-1 cannot size a SLURM request",
    ),
    ("tl-train", ["seed=[1,2"], "error: cannot read the overrides"),
    ("tl-train", ["trainer.max_epochs=-3"], "error: trainer.max_epochs must be an integer >= -1 (-1 = no limit)"),
    ("tl-train", ["trainer.max_steps=-2"], "error: trainer.max_steps must be an integer >= -1"),
    ("tl-train", ["trainer.max_epochs=2.5"], "error: trainer.max_epochs must be an integer >= -1"),
    ("tl-train", ["trainer.min_epochs=5"], "error: trainer.min_epochs=5 exceeds trainer.max_epochs=1"),
    ("tl-train", ["trainer.devices=0"], "error: trainer.devices must be a positive number of devices"),
    ("tl-train", ["trainer.num_nodes=0"], "error: trainer.num_nodes must be an integer >= 1"),
    ("tl-train", ["trainer.precision=17"], "error: trainer.precision must be one of 64, 64-true, 32"),
    ("tl-train", ["trainer.limit_train_batches=1.5"], "error: trainer.limit_train_batches must be an integer >= 0"),
    ("tl-train", ["trainer.limit_val_batches=-1"], "error: trainer.limit_val_batches must be an integer >= 0"),
    ("tl-train", ["trainer.val_check_interval=0"], "error: trainer.val_check_interval must be an integer >= 1"),
    ("tl-train", ["trainer.check_val_every_n_epoch=0"], "error: trainer.check_val_every_n_epoch must be an integer"),
    ("tl-train", ["trainer.accumulate_grad_batches=0"], "error: trainer.accumulate_grad_batches must be an integer"),
    ("tl-train", ["trainer.gradient_clip_val=-1"], "error: trainer.gradient_clip_val must be a number >= 0"),
    ("tl-train", ["trainer.log_every_n_steps=0"], "error: trainer.log_every_n_steps must be an integer >= 1"),
    ("tl-train", ["data.batch_size=0"], "error: data.batch_size must be an integer >= 1, got 0"),
    ("tl-train", ["data.batch_size=abc"], "error: data.batch_size must be an integer >= 1, got 'abc'"),
    ("tl-train", ["data.image_size=0"], "error: data.image_size must be an integer >= 8, got 0"),
    ("tl-train", ["data.num_workers=-1"], "error: data.num_workers must be an integer >= 0"),
    ("tl-train", ["data.val_fraction=1"], "error: data.val_fraction must be a number in [0, 1)"),
    ("tl-train", ["data.examples_per_class=0"], "error: data.examples_per_class must be an integer >= 1"),
    ("tl-train", ["data.train_size=0"], "error: data.train_size must be an integer >= 1"),
    ("tl-train", ["model.optimizer.lr=0"], "error: model.optimizer.lr must be a number >= 1e-12, got 0"),
    ("tl-train", ["model.optimizer.lr=abc"], "error: model.optimizer.lr must be a number"),
    ("tl-train", ["model.optimizer.weight_decay=-0.1"], "error: model.optimizer.weight_decay must be a number >= 0"),
    ("tl-train", ["model.label_smoothing=1.5"], "error: model.label_smoothing must be a number in [0, 1)"),
    (
        "tl-train",
        ["model.finetune.mode=probe"],
        "error: model.finetune.mode must be one of full, linear_probe, gradual",
    ),
    (
        "tl-train",
        ["model.finetune.backbone_lr_mult=-1"],
        "error: model.finetune.backbone_lr_mult must be a number >= 0",
    ),
    ("tl-train", ["seed=-1"], "error: seed must be an integer >= 0 or null"),
    ("tl-train", ["monitor.mode=maximum"], "error: monitor.mode must be one of min, max, got 'maximum'"),
    ("tl-train", ["train=false", "test=false"], "error: both train=false and test=false: nothing to do"),
    ("tl-train", ["callbacks.early_stopping.patience=-1"], "error: callbacks.early_stopping.patience must be"),
    ("tl-train", ["hydra.run.dir=/proc/transferlab"], "error: cannot create the output folder /proc/transferlab"),
    ("tl-train", ["hydra.run.dir={tmp}/a_file/run"], "error: cannot create the output folder {tmp}/a_file/run"),
    ("tl-train", ["ckpt_path=missing.ckpt"], "error: checkpoint missing.ckpt does not exist"),
    ("tl-train", ["-m", "seed=0,-1"], "error: seed must be an integer >= 0 or null, got -1"),
    ("tl-train", ["-m", "data.batch_size=8,0"], "error: data.batch_size must be an integer >= 1, got 0"),
    ("tl-train", [*TINY_PHOTOS, "data/degrade=nosie"], "error: no data/degrade config named 'nosie'"),
    ("tl-train", [*TINY_PHOTOS, "data.patch_size=4"], "error: data.patch_size must be an integer >= 8"),
    (
        "tl-train",
        ["experiment=denoising", "model.finetune.mode=linear_probe"],
        "error: unknown key model.finetune.mode",
    ),
    ("tl-train", ["experiment=denoising", "model.net.depth=0"], "error: model.net.depth must be an integer >= 1"),
    ("tl-train", ["model.head_hidden=0"], "error: model.head_hidden must be an integer >= 1"),
    ("tl-train", ["experiment=style_transfer", "model/loss_network=vgg19"], "error: no model/loss_network config"),
    ("tl-train", ["experiment=style_transfer", "model.style_weight=-1"], "error: model.style_weight must be a number"),
    ("tl-eval", [], "error: ckpt_path is required and has no value. Pass ckpt_path=<value>"),
    ("tl-eval", ["ckpt_path=missing.ckpt"], "error: checkpoint missing.ckpt does not exist"),
    ("tl-eval", ["ckpt_path=x", "trainer.max_epoch=1"], "error: unknown key trainer.max_epoch"),
    ("tl-predict", ["ckpt_path=missing.ckpt", "input=."], "error: checkpoint missing.ckpt does not exist"),
    ("tl-predict", [*PREDICT, "tile=4"], "error: tile must be an integer >= 8, got 4"),
    ("tl-predict", [*PREDICT, "tile=32", "overlap=16"], "error: tile=32 is too small for overlap=16"),
    ("tl-predict", [*PREDICT, "top_k=0"], "error: top_k must be an integer >= 1, got 0"),
    ("tl-predict", [*PREDICT, "batch_size=0"], "error: batch_size must be an integer >= 1, got 0"),
    ("tl-predict", [*PREDICT, "on_bad_file=ignore"], "error: on_bad_file must be one of skip, error, got 'ignore'"),
    ("tl-export", ["ckpt_path=x", "format=tflite"], "error: format must be one of onnx, torchscript, got 'tflite'"),
    ("tl-predict", ["inptu=photos"], "error: unknown key inptu. Did you mean input"),
    ("tl-report", ["nosuchdir"], "error: nosuchdir is not a directory"),
    ("tl-report", ["--format", "xml", "."], "error: unrecognized arguments: --format"),
    ("tl-report", [".", "--plot", "plots"], "error: --plot plots: not a .png file name"),
]


def assert_one_line_error(result, expected: str, tmp: Path) -> None:
    stderr = result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{stderr[-3000:]}"
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, stderr[-3000:]
    assert error_lines[0].startswith(expected), error_lines[0]
    assert error_lines[0].rstrip().endswith((".", "?", ")")) or ". " in error_lines[0], "what, then how to fix"
    assert "Traceback" not in stderr and "HYDRA_FULL_ERROR" not in stderr, stderr[-3000:]
    assert not list(tmp.rglob("metrics.json")), "no result may look finished"
    assert not list(tmp.rglob("*.ckpt")) or all(p.name in ("foreign.ckpt", "text.ckpt") for p in tmp.rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("command", "args", "expected"), CONFIG_CASES, ids=[" ".join(c[1]) or c[0] for c in CONFIG_CASES]
)
def test_config_mistake_is_one_line_before_anything_runs(tmp_path: Path, command: str, args, expected: str) -> None:
    if "hydra/launcher=slurm" in args:
        needs_extra("slurm")  # without it the one line names the extra instead (tests/test_extras.py)
    (tmp_path / "a_file").write_text("not a folder")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    base = TINY if command == "tl-train" and not any(a.startswith(("experiment=", "data=")) for a in args) else []
    result = run_cli(command, *base, *args, cwd=tmp_path)
    assert_one_line_error(result, expected.replace("{tmp}", str(tmp_path)), tmp_path)
    assert not (tmp_path / "outputs").exists(), "answered before Hydra made a run directory"


def test_matrix_is_large_and_distinct() -> None:
    assert len(CONFIG_CASES) + len(DATA_CASES) >= 40
    keys = [(command, tuple(args)) for command, args, _ in CONFIG_CASES + DATA_CASES]
    assert len(set(keys)) == len(keys)


# -- mistakes found by opening data, weights or checkpoints (torch is imported) -----------------------
def _bad_files(root: Path) -> None:
    """The files the data cases point at, in real on-disk formats."""
    write_cifar(root / "cifar_wrong_keys")
    batch = root / "cifar_wrong_keys" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({"pixels": [1, 2, 3]}, protocol=2))
    write_cifar(root / "cifar_truncated")
    batch = root / "cifar_truncated" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:1000])
    for cls in ("a", "b"):
        (root / "empty_classes" / "train" / cls).mkdir(parents=True)
        (root / "empty_classes" / "val" / cls).mkdir(parents=True)
    (root / "no_images" / "train" / "a").mkdir(parents=True)
    (root / "no_images" / "train" / "a" / "notes.txt").write_text("not an image")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, root / "foreign.ckpt")
    (root / "text.ckpt").write_text("hello")
    (root / "empty_input").mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(root / "photo.png")


DATA_CASES = [
    ("tl-train", ["data=cifar10", "data.root={tmp}/nowhere"], "error: CIFAR10 not found: expected the python batches"),
    (
        "tl-train",
        ["data=cifar10", "data.root={tmp}/cifar_wrong_keys"],
        "error: {tmp}/cifar_wrong_keys/cifar-10-batches-py",
    ),
    (
        "tl-train",
        ["data=cifar10", "data.root={tmp}/cifar_truncated"],
        "error: {tmp}/cifar_truncated/cifar-10-batches-py/test_batch is not a CIFAR",
    ),
    ("tl-train", ["data=imagefolder", "data.root={tmp}/nowhere"], "error: image folder {tmp}/nowhere/train does not"),
    (
        "tl-train",
        ["data=imagefolder", "data.root={tmp}/empty_classes"],
        "error: no images in {tmp}/empty_classes/train",
    ),
    ("tl-train", ["data=imagefolder", "data.root={tmp}/no_images"], "error: no images in {tmp}/no_images/train"),
    ("tl-train", ["data.examples_per_class=100"], "error: class 0 has only 4 training images, fewer than data.exam"),
    ("tl-train", ["model.backbone.name=resnt18"], "error: unknown backbone 'resnt18'. Did you mean resnet18"),
    ("tl-train", ["data.batch_size=5", "trainer=ddp_sim"], "error: data.batch_size=5 is the global batch"),
    ("tl-train", ["model.backbone.weights=IMAGENET1K_V1"], "error: could not fetch mobilenet_v3_small weights"),
    ("tl-train", ["ckpt_path={tmp}/foreign.ckpt"], "error: {tmp}/foreign.ckpt was not written by tl-train"),
    ("tl-train", ["ckpt_path={tmp}/text.ckpt"], "error: cannot read checkpoint {tmp}/text.ckpt"),
    (
        "tl-train",
        [*TINY_PHOTOS, "data/degrade=gaussian_noise", "data.degrade.steps.0.sigma=-5", "model=denoise"],
        "error: gaussian noise sigma must be a number or a [low, high] range",
    ),
    ("tl-train", ["experiment=style_transfer", *TINY_PHOTOS, "model.styles=[nosuch.jpg]"], "error: image 'nosuch.jpg'"),
    ("tl-train", [*TINY_PHOTOS, "model=denoise"], "error: restoration needs degraded inputs: add a degradation"),
    (
        "tl-train",
        [*TINY_PHOTOS, "data/degrade=gaussian_noise", "model=restore_unet", "model.backbone.name=timm/resnet18"],
        "error: timm backbone 'timm/resnet18' has no feature layers ['relu']. Set model.backbone.layers to some",
    ),
    ("tl-eval", ["ckpt_path={tmp}/foreign.ckpt"], "error: {tmp}/foreign.ckpt was not written by tl-train"),
    ("tl-predict", ["ckpt_path={tmp}/text.ckpt", "input={tmp}/photo.png"], "error: cannot read checkpoint"),
    (
        "tl-predict",
        ["ckpt_path={tmp}/text.ckpt", "input={tmp}/empty_input"],
        "error: no image files in {tmp}/empty_input",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("command", "args", "expected"), DATA_CASES, ids=[" ".join(c[1])[-60:] for c in DATA_CASES])
def test_data_and_file_mistakes_are_one_line(tmp_path: Path, command: str, args, expected: str) -> None:
    _bad_files(tmp_path)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    base = TINY if command == "tl-train" and not any(a.startswith(("experiment=", "data=")) for a in args) else []
    result = run_cli(command, *base, *args, cwd=tmp_path)
    assert_one_line_error(result, expected.replace("{tmp}", str(tmp_path)), tmp_path)
