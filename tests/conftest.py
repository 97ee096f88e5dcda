"""Shared fixtures: configs composed the way the CLI composes them, shrunk to run in seconds on a CPU."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import transferlab  # noqa: F401  first: it picks the Lightning package (transferlab.upstream.lightning)

# isort: split
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hypothesis import Phase, settings
from hypothesis.configuration import set_hypothesis_home_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from transferlab.utils.config import config_dir, flatten

# TL_TEST_THREADS=1 for mutation testing: mutmut forks each worker from a process that already ran tests,
# and an OpenMP thread pool does not survive a fork (the worker hangs).
torch.set_num_threads(int(os.environ.get("TL_TEST_THREADS", min(2, os.cpu_count() or 1))))

# Property tests (hypothesis): no example database on disk (tests write only under tmp_path), no deadline
# (the first example pays for lazy imports); each test sets its own small max_examples. Mutation testing
# runs with HYPOTHESIS_PROFILE=mutation: a failure only has to be found, not shrunk (docs/testing.md).
# Its caches (source constants, failure patches) go to a temporary directory, never to ./.hypothesis.
set_hypothesis_home_dir(os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY") or tempfile.mkdtemp(prefix="hypothesis-"))
settings.register_profile("transferlab", database=None, deadline=None)
settings.register_profile(
    "mutation", parent=settings.get_profile("transferlab"), phases=[Phase.explicit, Phase.generate]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "transferlab"))

# The modules each optional extra brings (pyproject.toml); the test install has them all.
EXTRA_MODULES = {
    "slurm": ("submitit", "hydra_plugins.hydra_submitit_launcher"),
    "optuna": ("optuna",),
    "trackers": ("mlflow", "wandb"),
    "export": ("onnx", "onnxruntime"),
    "experiments": ("sklearn", "bm3d"),
}


def needs_extra(extra: str, *modules: str) -> None:
    """Skip the calling test, naming the extra to install, when its modules (default: all of the extra's) are
    missing: a contributor with a partial environment gets skips with the reason, not errors."""
    for module in modules or EXTRA_MODULES[extra]:
        pytest.importorskip(module, reason=f'needs the [{extra}] extra: pip install "transferlab[{extra}]"')


def preset_overrides(preset: Path) -> list[str]:
    """A config preset's values as command-line overrides (``debug/tiny.yaml`` → ``data.train_size=60``, …)."""
    values = flatten(OmegaConf.to_container(OmegaConf.load(preset)))

    def spelled(value: object) -> str:
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    return [f"{key}={spelled(value)}" for key, value in values.items() if key != "task_name"]


def data_settings(name: str) -> dict[str, Any]:
    """The literal settings of ``conf/data/<name>.yaml`` (no group defaults, no interpolated values): what a test
    constructing a datamodule directly starts from, so sizes and fractions are stated in the YAML only."""
    values = OmegaConf.to_container(OmegaConf.load(config_dir() / "data" / f"{name}.yaml"), resolve=False)
    return {k: v for k, v in values.items() if k not in ("_target_", "defaults") and "${" not in str(v)}


def make_data(cls: type, preset: str, **overrides: Any) -> Any:
    """`cls` (a datamodule class) with the preset's settings and `overrides`."""
    return cls(**{**data_settings(preset), **overrides})


# Small, fast and deterministic: debug=tiny's settings, as overrides that later ones may refine.
TINY = preset_overrides(config_dir() / "debug" / "tiny.yaml")

# A finished run deletes its last.ckpt (resume state); tests that read the final training state keep it.
KEEP_LAST = "callbacks.model_checkpoint.keep_last=true"

# The embedded photos as a handful of 32 px patches, for image-to-image tasks (style transfer, predict).
TINY_PHOTOS = [
    "data=photos",
    "data.patch_size=32",
    "data.batch_size=2",
    "data.train_patches=4",
    "data.val_patches=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false"]
PHOTOS = [*TINY_PHOTOS, "logger=none"]
# One tiny trained checkpoint per kind of model, for tl-predict and tl-export tests (each 2 CPU steps).
TINY_MODELS = {
    "classify": [*TINY, "logger=none", "model.backbone.name=resnet18"],  # mobilenet's untrained output is constant
    "denoise": [*PHOTOS, "model=denoise", "data/degrade=gaussian_noise", "model.net.depth=4"],
    "stylize": [*PHOTOS, "model=style_transfer", "model.style_size=64", "model.net.channels=4"],
    "inpaint": [*PHOTOS, "model=restore_unet", "data/degrade=inpaint_box", "model.net.width=8"],
    "upscale": [
        *PHOTOS,
        "model=super_resolution",
        "data/degrade=downscale",
        "model.net.channels=8",
        "model.net.blocks=1",
    ],
    "adain": [*PHOTOS, "model=adain", "model.style_size=64", "model.net.min_channels=8", "model.styles=[brick]"],
}


def train_briefly(out: Path, *overrides: str) -> Path:
    """Train in this process for two steps (no test) and return its best checkpoint (the weights-only file that
    evaluation, prediction and export read; a finished run keeps no last.ckpt)."""
    from transferlab.train import run

    run(compose_config([*overrides, *SHORT], out, "train"))
    return out / "checkpoints" / "best.ckpt"


class TinyCheckpoints:
    """`TINY_MODELS` checkpoints, each trained the first time a test asks for it (``checkpoints["denoise"]``)."""

    def __init__(self, root: Path) -> None:
        self.root, self.paths = root, {}

    def __getitem__(self, name: str) -> Path:
        if name not in self.paths:
            self.paths[name] = train_briefly(self.root / name, *TINY_MODELS[name])
            GlobalHydra.instance().clear()
        return self.paths[name]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoints:
    return TinyCheckpoints(tmp_path_factory.mktemp("ckpts"))


def fit_briefly(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    epochs: int = 1,
    steps: int = 3,
    accelerator: str = "cpu",
    precision: str = "32-true",
    callbacks: list[pl.Callback] | None = None,
) -> pl.Trainer:
    """A few training steps and one validation batch, with nothing written to disk (CPU fp32 unless asked for
    another accelerator and precision: the GPU tests pass ``"gpu"``, ``"bf16-mixed"``), watched by `callbacks`."""
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_epochs=epochs,
        limit_train_batches=steps,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(model, datamodule=datamodule)
    return trainer


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose like the CLI does, with Hydra's runtime info set so `${hydra:…}` resolves."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides, name="train")`` → a tiny composed config writing under tmp_path."""

    def make(*overrides: str, name: str = "train", tiny: bool = True, out: str = "run") -> DictConfig:
        base = TINY if tiny and name == "train" else []
        return compose_config([*base, *overrides], tmp_path / out, name)

    yield make
    GlobalHydra.instance().clear()


def cli_command(*args: str, cwd: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a console script run from `cwd`, as a user runs it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRANSFERLAB_ROOT": str(cwd)}
    script = Path(sys.executable).parent / args[0]
    command = [str(script)] if script.exists() else [args[0]]
    return [*command, *args[1:]], env


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a console script the way a user does (a subprocess), capturing its output."""
    command, env = cli_command(*args, cwd=cwd)
    return subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds (a background command got somewhere), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], log: Path, what: str, timeout: float = 300) -> None:
    """SIGKILL `process` (a `start_cli` command, with its whole process group) once `ready()` holds: a run killed
    midway, as a crash or a lost node would. Fails if the command ended on its own first."""
    try:
        wait_for(lambda: ready() or process.poll() is not None, timeout, what)
        assert process.poll() is None, f"it ended before it could be killed:\n{log.read_text()[-3000:]}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def start_cli(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    """Start a console script in its own process group (so a test can kill it with all its children).

    Its stdout and stderr go to `log`.
    """
    command, env = cli_command(*args, cwd=cwd)
    with log.open("w") as out:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


class SmallDisks:
    """Size-limited filesystems for disk-full tests: ``small_disk(bytes)`` mounts a tmpfs of that size (rounded up
    to pages) at a new folder under tmp_path and returns the folder; all are unmounted when the test ends.

    Mounting needs root (the tests run as root here and in CI); elsewhere the test is skipped, saying why."""

    def __init__(self, root: Path) -> None:
        self.root, self.mounted = root, []

    def __call__(self, size: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a size-limited tmpfs needs root (the disk-full tests run as root in CI)")
        folder = self.root / f"disk{len(self.mounted)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): no small disk to fill")
        self.mounted.append(folder)
        return folder

    def remount(self, folder: Path, options: str) -> None:
        """Change a mounted small disk's options: ``size=…`` (grow it), ``ro`` (writes now fail), ``rw``."""
        subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)

    def unmount_all(self) -> None:
        for folder in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisks]:
    """`SmallDisks` under this test's tmp_path."""
    disks = SmallDisks(tmp_path)
    yield disks
    disks.unmount_all()


class HostReads:
    """Records every read of a tensor value on the host while `armed`: on a GPU each one waits for all queued
    work (a device sync). Conversions (item, tolist, bool, int, float, index), nonzero, copies to the CPU and
    boolean-mask indexing are caught; syncs inside torch's C++ code are not."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "cpu", "numpy")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.armed = False
        for name in self.NAMES:
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))
        for name in ("__getitem__", "__setitem__"):
            monkeypatch.setattr(torch.Tensor, name, self._masked_indexing(name, getattr(torch.Tensor, name)))
        original_nonzero = torch.nonzero
        monkeypatch.setattr(
            torch, "nonzero", lambda *a, **k: self._record("torch.nonzero") or original_nonzero(*a, **k)
        )

    def _record(self, name: str) -> None:
        if self.armed:
            self.calls.append(name)

    def _counting(self, name: str, original: Callable) -> Callable:
        def read(tensor, *args, **kwargs):
            self._record(name)
            return original(tensor, *args, **kwargs)

        return read

    def _masked_indexing(self, name: str, original: Callable) -> Callable:
        def index(tensor, key, *args):
            keys = key if isinstance(key, tuple) else (key,)
            if any(isinstance(k, torch.Tensor) and k.dtype == torch.bool for k in keys):
                self._record(f"{name} with a boolean mask")
            return original(tensor, key, *args)

        return index


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> HostReads:
    """`HostReads` for the test, disarmed until the test sets ``.armed = True``; undone afterwards."""
    return HostReads(monkeypatch)


# -- GPU tests run in a process of their own ---------------------------------------------------------------
def _selects_only_gpu_tests(markexpr: str) -> bool:
    """``-m gpu`` (or ``-m "gpu and …"``): a run of GPU tests alone."""
    return re.fullmatch(r"\s*gpu(\s+and\s+.+)?\s*", markexpr or "") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests unless the run selects them alone (``python -m pytest -m gpu``).

    A GPU test leaves process state behind that CPU tests must not inherit (a CUDA context, CUDA-graph memory
    pools, the sync-debug mode, cuDNN benchmark choices), and the GPU tests must not inherit the CPU tests'
    (thread counts, a leftover process group): so they run in their own pytest process.
    """
    if _selects_only_gpu_tests(config.option.markexpr):
        return
    skip = pytest.mark.skip(reason="GPU test: run the GPU tests in their own process, python -m pytest -m gpu")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


# -- tests write only under their temporary directories -----------------------------------------------
_REPO = Path(__file__).resolve().parents[1]
_NOT_SOURCE = {".git", ".venv", "mutants", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", ".whl"}


def _source_tree_files() -> set[Path]:
    files: set[Path] = set()
    for folder, subfolders, names in os.walk(_REPO):
        subfolders[:] = [name for name in subfolders if name not in _NOT_SOURCE and not name.endswith(".egg-info")]
        files.update(Path(folder, name) for name in names)
    return files


@pytest.fixture(scope="session", autouse=True)
def _nothing_written_into_the_source_tree():
    """Fails the session if any test left a file in the repository (outputs/, conf/local/, …)."""
    before = _source_tree_files()
    yield
    added = sorted(str(path.relative_to(_REPO)) for path in _source_tree_files() - before)
    assert not added, f"tests wrote into the source tree: {added[:10]}"
