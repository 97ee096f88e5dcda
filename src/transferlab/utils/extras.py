"""The optional extras of pyproject.toml and the one line a user meets when a feature's extra is missing.

The user install (``pip install transferlab``) holds what the default job, grid sweeps, TensorBoard, tl-report,
tl-predict/tl-eval and the embedded photos need. A feature that needs more names its extra, so the fix is a
copy-paste: ``error: hydra/launcher=slurm needs submitit. pip install "transferlab[slurm]"``.
Imports nothing heavy: the CLI's preflight and the Hydra plugins call it before torch loads.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from transferlab.utils.errors import UserError

# The Python modules each extra brings (import name → its pip name in the message).
SLURM_MODULES = {"submitit": "submitit", "hydra_plugins.hydra_submitit_launcher": "hydra-submitit-launcher"}
# The hydra/launcher options that run on submitit: transferlab's and hydra-submitit-launcher's own two.
SUBMITIT_LAUNCHERS = ("slurm", "submitit_local", "submitit_slurm")
# The [trackers] extra: each logger config's builder (its _target_) → the module it needs.
TRACKERS = {"transferlab.loggers.mlflow_logger": "mlflow", "transferlab.loggers.wandb_logger": "wandb"}
TRACKERS_INSTALL = "pip install 'transferlab[trackers]'"


def install_command(extra: str) -> str:
    """The pip command that installs `extra` (quoted: ``[`` is a glob character in most shells)."""
    return f'pip install "transferlab[{extra}]"'


def missing(modules: dict[str, str]) -> list[str]:
    """The pip names of those `modules` (import name → pip name) that cannot be imported."""
    absent = []
    for module, package in modules.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package is missing, or the module is blocked
            found = False
        if not found:
            absent.append(package)
    return absent


def require(feature: str, extra: str, modules: dict[str, str]) -> None:
    """Raise `UserError` naming `extra` when one of `modules` (import name → pip name) is not installed."""
    absent = missing(modules)
    if absent:
        raise UserError(f"{feature} needs {' and '.join(absent)}. {install_command(extra)}")


def require_tracker(module: str, logger_name: str) -> None:
    """``logger=mlflow`` / ``logger=wandb`` need their tracker's package: the ``[trackers]`` extra."""
    if missing({module: module}):
        raise UserError(f"logger={logger_name} needs the '{module}' package. Install it: {TRACKERS_INSTALL}")


def check_loggers(cfg: Any) -> None:
    """Every tracker the composed config logs to is installed: said in the CLI's preflight, seconds before the
    run would build its loggers (after torch, Lightning and the data have loaded)."""
    from omegaconf import DictConfig

    loggers = cfg.get("logger")
    for node in loggers.values() if isinstance(loggers, DictConfig) else ():
        module = TRACKERS.get(str(node.get("_target_"))) if isinstance(node, DictConfig) else None
        if module is not None:
            require_tracker(module, module)


def require_slurm(launcher: str = "slurm") -> None:
    """``hydra/launcher=slurm`` (and submitit's own launchers) run on submitit through hydra-submitit-launcher:
    the ``[slurm]`` extra."""
    require(f"hydra/launcher={launcher}", "slurm", SLURM_MODULES)
