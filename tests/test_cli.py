"""tl-train and tl-eval as a user runs them: subprocesses, real config composition, files on disk."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import TINY, run_cli

ROOT = Path(__file__).resolve().parents[1]


def run_dir(stdout: str) -> Path:
    match = re.search(r"^Run directory: (.+)$", stdout, re.MULTILINE)
    assert match, stdout[-2000:]
    return Path(match.group(1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny tl-train run shared by the CLI tests."""
    cwd = tmp_path_factory.mktemp("cli")
    result = run_cli("tl-train", *TINY, "trainer.max_epochs=2", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir(result.stdout)


def test_train_writes_run_directory_under_outputs(trained: Path) -> None:
    assert trained.parent.parent.name == "runs" and trained.parents[2].name == "outputs"
    assert (trained / "checkpoints" / "best.ckpt").is_file()
    assert not (trained / "checkpoints" / "last.ckpt").exists(), "a cleanly finished run needs no resume state"
    assert list(trained.glob("events.out.tfevents.*")), "TensorBoard logs go straight into the run directory"
    assert (trained / ".hydra" / "config.yaml").is_file()
    summary = json.loads((trained / "metrics.json").read_text())
    assert summary["monitor"]["metric"] == "val/acc" and summary["monitor"]["best"] is not None
    assert {"test/acc", "test/acc_top5", "val/acc", "test/acc_class/star"} <= set(summary["metrics"])
    assert summary["epochs"] == 2 and summary["overrides"][:2] == TINY[:2]
    sources = {"cpu_threads", "OMP_NUM_THREADS", "affinity", "cgroup quota", "SLURM_CPUS_PER_TASK"}
    assert summary["cpu"]["threads"] >= 1 and summary["cpu"]["source"] in sources
    assert summary["cpu"]["loader_workers"] == 0, "debug=tiny says data.num_workers=0"


def test_eval_reproduces_the_training_test_metric(trained: Path) -> None:
    train_metrics = json.loads((trained / "metrics.json").read_text())["metrics"]
    ckpt = trained / "checkpoints" / "best.ckpt"
    cwd = trained.parents[3]
    result = run_cli("tl-eval", f"ckpt_path={ckpt}", "trainer.accelerator=cpu", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    eval_dir = run_dir(result.stdout)
    assert eval_dir.parent.parent.name == "eval"
    summary = json.loads((eval_dir / "metrics.json").read_text())
    metrics = summary["metrics"]
    assert summary["cpu"]["threads"] >= 1 and summary["cpu"]["loader_workers"] >= 0, "tl-eval records its CPU use too"
    for name in ("test/acc", "test/loss", "test/acc_top5"):
        assert abs(metrics[name] - train_metrics[name]) <= 1e-4, name


def test_checkpoint_loads_with_weights_only(trained: Path) -> None:
    import torch

    checkpoint = torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["backbone"]["name"] == "mobilenet_v3_small"
    assert checkpoint["transferlab"]["config"]["data"]["_target_"].startswith("transferlab.")


def test_continuing_a_finished_run_is_one_line_with_exit_2(trained: Path) -> None:
    last, best = trained / "checkpoints" / "last.ckpt", trained / "checkpoints" / "best.ckpt"
    result = run_cli("tl-train", *TINY, f"ckpt_path={last}", cwd=trained.parents[3])
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == (
        f"error: {trained} finished cleanly and its last.ckpt (the only checkpoint with optimizer state) was "
        "deleted then, so training cannot continue from it. To fine-tune from it now (its backbone, a new head): "
        f"model.backbone.weights={best} without ckpt_path; to be able to resume a finished run next time: "
        "callbacks.model_checkpoint.keep_last=true"
    )


def test_missing_dataset_is_one_line_with_exit_2(tmp_path: Path) -> None:
    result = run_cli("tl-train", "data=cifar10", "data.root=/nonexistent", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: CIFAR10 not found: expected the python batches")


def test_eval_of_missing_checkpoint(tmp_path: Path) -> None:
    result = run_cli("tl-eval", "ckpt_path=missing.ckpt", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: checkpoint missing.ckpt does not exist")
    result = run_cli("tl-eval", cwd=tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "error: ckpt_path is required and has no value. Pass ckpt_path=<value> on the command line"
    )


def test_help_and_cfg_job_work(tmp_path: Path) -> None:
    result = run_cli("tl-train", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "data: cifar10, cifar100, imagefolder, photos, shapes" in result.stdout
    result = run_cli("tl-train", "--cfg", "job", "seed=0", cwd=tmp_path)
    assert result.returncode == 0 and "seed: 0" in result.stdout and "metric: val/acc" in result.stdout


@pytest.mark.slow
def test_non_editable_wheel_ships_configs(tmp_path: Path) -> None:
    """A regular (non-editable) install finds conf/ inside the package."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("transferlab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "transferlab/conf/train.yaml" in names and "transferlab/conf/data/augment/cifar.yaml" in names
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    probe = subprocess.run(
        [sys.executable, "-c", "from transferlab.utils.config import config_dir; print(config_dir())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert probe.returncode == 0, probe.stderr
    assert Path(probe.stdout.strip()) == site / "transferlab" / "conf"


def test_default_console_is_quiet_and_verbose_brings_lightning_back(tmp_path: Path) -> None:
    """The default job's console: a header, one line per epoch, the results, the run directory; nothing else
    from Lightning (banners, tips, model table with FLOPs, per-class test table, deprecation warnings)."""
    tiny = ["data.train_size=60", "data.test_size=20", "data.image_size=32", "trainer.max_epochs=2"]
    result = run_cli("tl-train", *tiny, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    for word in (
        "Warning",
        "warning",
        "deprecated",
        "Tip",
        "HINT",
        "FLOPs",
        "GPU available",
        "Test metric",
        "Seed set",
    ):
        assert not any(word in line for line in lines), [line for line in lines if word in line]
    assert not [line for line in lines if re.search(r"\.py:\d+: ", line)], "a warning printed with its source line"
    stdout = [line for line in result.stdout.splitlines() if line.strip()]
    assert stdout[0].startswith("transferlab: Classification · efficientnet_lite0 (imagenet) · Shapes · cpu")
    epochs = [line for line in stdout if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"] and "val/acc" in epochs[0]
    assert any(line.startswith("test: acc ") for line in stdout) and stdout[-1].startswith("Run directory: ")

    verbose = run_cli("tl-train", *tiny, "verbose=true", "trainer.max_epochs=1", cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "GPU available" in verbose.stdout + verbose.stderr and "Test metric" in verbose.stdout


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--cfg", "job"], ["data=nosuch"], ["trainer.max_epochs=-3"], ["trainer.max_step=3"]],
    ids=["help", "cfg", "unknown-option", "out-of-range", "unknown-key"],
)
def test_answers_from_the_config_alone_never_import_torch(args: list[str], tmp_path: Path) -> None:
    """--help, --cfg and every config mistake are answered before torch/Lightning load (≤ 1.5 s on 2 cores;
    bench/cli_latency.py measures it)."""
    probe = (
        "import sys, time\n"
        f"sys.argv = ['tl-train', *{args!r}]\n"
        "from transferlab.cli import train\n"
        "try:\n    train()\nexcept SystemExit as stop:\n    code = stop.code\nelse:\n    code = 0\n"
        "print('torch loaded:', 'torch' in sys.modules, 'exit:', code, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    expected_exit = 0 if args[0].startswith("--") else 2
    assert f"torch loaded: False exit: {expected_exit}" in result.stderr, result.stderr[-2000:]
