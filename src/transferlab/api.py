"""The Python API: ``transferlab.train([...])``, ``transferlab.evaluate([...])``, ``transferlab.predict([...])``.

Each runs exactly what its command runs with the same overrides (the same config checks, run directory,
checkpoints, logs and ``metrics.json``) and returns the result instead of printing it; a mistake raises
`transferlab.utils.errors.UserError` with the command's one-line message. The modules ``transferlab.train``,
``transferlab.evaluate`` and ``transferlab.predict`` are themselves callable (see `callable_module`), so the
names work whether or not the module has been imported.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transferlab.constants import METRICS_FILE


def train(overrides: Sequence[str] | None = None, config_name: str = "train") -> dict[str, Any]:
    """Run ``tl-train <overrides>``; return its ``metrics.json`` contents plus ``run_dir``."""
    return _run_job(config_name, "transferlab.train", overrides, _summary)


def evaluate(overrides: Sequence[str] | None = None, config_name: str = "eval") -> dict[str, Any]:
    """Run ``tl-eval <overrides>`` (``ckpt_path=…`` at least); return its ``metrics.json`` plus ``run_dir``."""
    return _run_job(config_name, "transferlab.evaluate", overrides, _summary)


def predict(overrides: Sequence[str] | None = None, config_name: str = "predict") -> Path:
    """Run ``tl-predict <overrides>`` (``ckpt_path=… input=…``); return the folder the results went to."""
    return _run_job(config_name, "transferlab.predict", overrides, lambda _run_dir, output: output)


def _summary(run_dir: Path, _returned: Any) -> dict[str, Any]:
    return {**json.loads((run_dir / METRICS_FILE).read_text()), "run_dir": run_dir}


def _run_job(config_name: str, module: str, overrides: Sequence[str] | None, result: Callable[[Path, Any], Any]) -> Any:
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from transferlab.cli import isolated_job, preflight
    from transferlab.utils.config import config_dir

    overrides = [str(override) for override in overrides or []]
    preflight(config_name, overrides)
    run = importlib.import_module(module).run

    def job(cfg: Any) -> Any:
        return result(Path(HydraConfig.get().runtime.output_dir), isolated_job(run)(cfg))

    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(module.rsplit(".", 1)[-1], create_config_search_path(str(config_dir())))
    try:
        return hydra.run(config_name=config_name, task_function=job, overrides=overrides).return_value
    finally:
        GlobalHydra.instance().clear()


def callable_module(name: str, function: Callable[..., Any]) -> None:
    """Make module `name` callable as `function`: ``transferlab.train`` is both the module behind
    ``tl-train`` and the API function, because importing a submodule sets the package attribute of that name."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

    sys.modules[name].__class__ = CallableModule
