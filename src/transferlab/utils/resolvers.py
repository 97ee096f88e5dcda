"""OmegaConf resolvers the configs use (``${tl.…:…}``); registered on import of `transferlab.runner`.

They exist so one value is written once: the Optuna direction derives from ``monitor.mode``, a sweep
job's directory name from its overrides, a tracker's run name from the run directory, an image folder's
resolution from its images, and a SLURM job's GPU request from the trainer.
"""

from __future__ import annotations

import hashlib
import os
import re

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

DIRECTIONS = {"max": "maximize", "min": "minimize"}
MAX_DIRNAME = 160
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")
_LONG_NUMBER = re.compile(r"(?<==)-?\d+\.\d{5,}(?:e-?\d+)?(?=,|$)")  # Optuna's 0.0022881136684755237


def direction(mode: str) -> str:
    """Optuna's study direction for a ``monitor.mode`` (max → maximize, min → minimize)."""
    if mode not in DIRECTIONS:
        raise ValueError(f"monitor.mode must be 'min' or 'max', got {mode!r}")
    return DIRECTIONS[mode]


def job_dirname(override_dirname: str, job_num: int | str = 0) -> str:
    """A file-system-safe, stable directory name for a sweep job from its overrides.

    ``model.backbone.name=resnet18,seed=1`` stays as it is, so TensorBoard's run list is readable. Long
    decimals (Optuna's samples) are rounded to 4 significant digits, characters that could nest directories
    or confuse shells become ``_``; a name that had to change or is too long
    gets a short hash of the original overrides, so two different jobs never share a directory and the
    same job always maps to the same one (which is what lets a re-launched sweep find its finished jobs).
    """
    if not override_dirname:
        return f"job{job_num}"
    name = _LONG_NUMBER.sub(lambda m: f"{float(m.group()):.4g}", override_dirname)
    name = _UNSAFE.sub("_", name).lstrip(".")
    if name == override_dirname and len(name) <= MAX_DIRNAME:
        return name
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:8]
    return f"{name[: MAX_DIRNAME - 9]}-{digest}"


def launch_dir() -> str:
    """The directory the command was started from.

    Unlike ``${hydra:runtime.cwd}`` this also resolves where a sweeper computes ``hydra.sweep.dir`` (before
    any job, so before Hydra's runtime info exists); inside a job it is Hydra's original cwd.
    """
    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.cwd)
    return os.getcwd()


def gpus_per_node(accelerator: str, devices: int | str) -> int | None:
    """GPUs a SLURM job asks for per node: the trainer's devices on a GPU trainer, none otherwise (``auto``
    included: the login node cannot tell what a compute node has; pick ``trainer=gpu``/``ddp`` for GPUs)."""
    if str(accelerator) not in ("gpu", "cuda"):
        return None
    if not str(devices).isdigit() or int(devices) < 1:
        raise ValueError(
            f"trainer.devices={devices} cannot size a SLURM request: give the GPUs per node as a number "
            "(e.g. trainer.devices=4)"
        )
    return int(devices)


def auto_image_size(root: str) -> int:
    """``data.image_size`` for an image folder: chosen from its images (`imagefolder.auto_image_size`)."""
    from transferlab.data.imagefolder import auto_image_size as from_images  # torch: only when resolved

    return from_images(root)


def run_name(run_dir: str, log_dir: str) -> str:
    """A run's name in the experiment trackers: its directory under ``outputs/`` (``multirun/<date>/<time>/seed=1``),
    unique and telling where its files are; the directory's own name when it is elsewhere."""
    path, root = os.path.abspath(run_dir), os.path.abspath(log_dir)
    return os.path.relpath(path, root) if os.path.commonpath([path, root]) == root else os.path.basename(path)


def register_resolvers() -> None:
    """Register the ``tl.*`` resolvers once per process (idempotent)."""
    for name, fn in (
        ("tl.direction", direction),
        ("tl.job_dirname", job_dirname),
        ("tl.launch_dir", launch_dir),
        ("tl.auto_image_size", auto_image_size),
        ("tl.gpus_per_node", gpus_per_node),
        ("tl.run_name", run_name),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
