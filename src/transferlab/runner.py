"""The core the CLI entry points share: Hydra app wrapper, building trainer/callbacks/loggers from config,
collecting final metrics and writing them atomically."""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from transferlab.utils.config import config_dir
from transferlab.utils.errors import UserError, describe, find_user_error, report_user_errors


def hydra_app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Turn ``run(cfg)`` into a Hydra CLI on transferlab's configs, printing `UserError`s as one line."""

    def wrap(run: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(run)
        def checked(cfg: DictConfig) -> Any:
            try:
                return run(cfg)
            except MissingMandatoryValue as err:
                key = err.full_key or "a value"
                raise UserError(f"{key} is required and has no value. Pass {key}=<value> on the command line") from err

        return hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(
            report_user_errors(checked)
        )

    return wrap


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """Instantiate config `node` (found at `key`); a value the target rejects becomes a one-line error.

    Targets reject bad values with ValueError/TypeError (wrong type, unknown keyword, out of range);
    Hydra wraps those, so without this the user would see a traceback for a typo in an override.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        found = find_user_error(err)
        if found is not None:  # the target itself explained the problem: surface that, not Hydra's wrapper
            raise found from None
        cause = err.__cause__
        if not isinstance(cause, ValueError | TypeError | OSError):
            raise
        raise UserError(f"invalid {key} settings: {describe(cause)}. Check the {key}.* overrides") from err


def instantiate_named(group: DictConfig | None, key: str = "callbacks") -> list[Any]:
    """Instantiate a dict of named configs (``callbacks``/``logger``); a null entry switches one off."""
    if not group:
        return []
    return [build(node, f"{key}.{name}") for name, node in group.items() if node is not None and "_target_" in node]


def build_trainer(cfg: DictConfig, callbacks: list[pl.Callback], loggers: list[Any]) -> pl.Trainer:
    """Build the Lightning trainer of `cfg.trainer` with the run's callbacks and loggers."""
    return build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)


def output_dir() -> Path:
    """This job's directory (Hydra's run/sweep dir)."""
    return Path(HydraConfig.get().runtime.output_dir)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Plain floats from Lightning's logged metrics (one host sync, at the end of the run)."""
    out = {}
    for name, value in sorted(metrics.items()):
        number = float(value.item() if isinstance(value, torch.Tensor) else value)
        if math.isfinite(number):
            out[name] = number
    return out


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON so readers see either nothing or the whole file (tmp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def task_overrides() -> list[str]:
    """The command-line overrides of this job (what distinguishes it within a sweep)."""
    return list(HydraConfig.get().overrides.task)


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The whole config with every ``${…}`` resolved, as plain containers."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
