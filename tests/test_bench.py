"""The benchmarks run, and the framework's host cost per training step stays within a fixed bound on any CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Generous against run-to-run noise on a shared 2-core CI machine; measured ~1.1 ms/step there (BENCHMARKS.md).
HOST_OVERHEAD_BOUND_MS = 3.0


def test_framework_host_overhead_per_step_is_bounded(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    command = [sys.executable, str(ROOT / "bench" / "host_overhead.py"), "--repeats", "3", "--steps", "100"]
    result = subprocess.run([*command, "--json", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert len(figures["raw_ms"]) == len(figures["framework_ms"]) == 3
    assert figures["overhead_ms"] < HOST_OVERHEAD_BOUND_MS, figures


@pytest.mark.slow
def test_throughput_bench_runs_every_case(tmp_path: Path) -> None:
    """Every bench/throughput.py case (classification, every augment preset, restoration, style, JPEG folder,
    the CLI epoch) runs at smoke size on a CPU and reports both sides."""
    out = tmp_path / "throughput.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--smoke", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["case"]: row for row in json.loads(out.read_text())["results"]}
    expected = {
        "eager_b512",
        "eager_b100",
        "e2e_cifar_b512",
        "e2e_randaugment_b512",
        "dncnn17_b128",
        "unet_resnet34_b32",
        "edsr_x2_b16",
        "johnson_vgg16_b8",
        "folder_files_mobilenet_v3_small",
        "folder_cache_mobilenet_v3_small",
        "cli_epoch",
    }
    assert expected <= set(rows), sorted(rows)
    assert all(row["raw_median"] > 0 and row["framework_median"] > 0 for row in rows.values()), rows


@pytest.mark.slow
def test_gpu_first_contact_dry_run_passes_every_step(tmp_path: Path) -> None:
    """bench/gpu_first_contact.sh --dry-run: the first-GPU-run script's every step (versions, the GPU tests'
    collection, the smoke runs, the nvJPEG check, the three bench rows) passes on the CPU, so the script itself is
    not what fails on first contact; its logs, runs and figures land in the folder it is given."""
    out = tmp_path / "first-contact"
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_first_contact.sh"), "--dry-run", str(out)],
        cwd=tmp_path,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=1500,
        stdin=subprocess.DEVNULL,
    )
    summary = (out / "summary.txt").read_text()
    assert result.returncode == 0, summary[-4000:]
    assert "FAILED" not in summary and "== 0 step(s) failed" in summary
    steps = ["versions", "pytest_gpu", "nvjpeg", "bench"]
    steps += [f"smoke_{name}" for name in ("clip", "style_compiled", "adain_compiled", "restore_compiled", "ddp")]
    assert all((out / f"{step}.log").is_file() for step in [*steps, "smoke_profile"]), sorted(out.iterdir())
    for run in ("clip", "style_compiled", "adain_compiled", "restore_compiled", "ddp", "profile"):
        assert json.loads((out / "runs" / run / "metrics.json").read_text())["metrics"], run
    clip_config = (out / "runs" / "clip" / ".hydra" / "config.yaml").read_text()
    assert "gradient_clip_val: 1.0" in clip_config and "precision: bf16-mixed" in clip_config
    assert (
        "FitLoop" in (out / "smoke_profile.log").read_text()
        or "run_training_epoch" in (out / "smoke_profile.log").read_text()
    )
    rows = {row["case"] for row in json.loads((out / "throughput.json").read_text())["results"]}
    assert rows == {"eager_b512", "e2e_randaugment_b512", "dncnn17_b128"}


def test_gpu_first_contact_refuses_unknown_options(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_first_contact.sh"), "--dryrun"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: unknown option --dryrun. Usage: bench/gpu_first_contact.sh [--dry-run] [OUT_DIR]"
    )


def load_bench(name: str, monkeypatch: pytest.MonkeyPatch):
    """A bench script as a module (registered while the test runs: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_raw_epoch_is_timed_after_a_warm_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The raw loop's epoch is timed like the framework's (its second epoch): after warm-up steps, not from a cold
    start (cuDNN autotuning, allocator growth and lazy initialisation would count against the raw side)."""
    bench = load_bench("throughput", monkeypatch)
    timed: list = []
    monkeypatch.setattr(bench, "raw_rate", lambda cfg, setup, case: timed.append(setup) or 1000.0)
    root = bench.write_cifar10(tmp_path / "cifar", train_images=200)
    setup = bench.Setup(backbone="mobilenet_v3_small", steps=3, warmup=2, out=tmp_path)
    seconds = bench.raw_epoch_seconds(setup, root, batch_size=16)
    (epoch,) = timed
    assert epoch.warmup == 2  # warm-up steps first (raw_rate synchronises before its timed window)
    assert epoch.steps * 16 == pytest.approx(seconds * 1000.0)  # then one whole epoch of the training split
    assert epoch.steps >= 10


@pytest.mark.parametrize(
    ("markexpr", "alone"),
    [("gpu", True), (" gpu and not slow ", True), ("", False), ("not gpu", False), ("slow or gpu", False)],
)
def test_gpu_tests_run_only_when_selected_alone(markexpr: str, alone: bool) -> None:
    """`pytest -m gpu` (what the first-contact script runs) runs the GPU tests in a process of their own; any other
    selection skips them, so CUDA state never mixes with the CPU tests'."""
    from conftest import _selects_only_gpu_tests

    assert _selects_only_gpu_tests(markexpr) is alone
