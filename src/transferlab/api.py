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
    """Compose the config with Hydra's public compose API, then run it as Hydra runs a single job: in its
    ``hydra.run.dir``, with ``.hydra/{config,hydra,overrides}.yaml``, Hydra's logging and ``hydra.job.env_set``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from transferlab.cli import isolated_job, preflight
    from transferlab.utils.config import config_dir

    overrides = [str(override) for override in overrides or []]
    preflight(config_name, overrides)
    run = importlib.import_module(module).run
    job_name = module.rsplit(".", 1)[-1]

    GlobalHydra.instance().clear()
    saved = HydraConfig.instance().cfg
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name=job_name):
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
            return _run_composed(cfg, lambda task_cfg: result(_output_dir(), isolated_job(run)(task_cfg)))
    finally:
        HydraConfig.instance().cfg = saved
        GlobalHydra.instance().clear()


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _run_composed(cfg: Any, job: Callable[[Any], Any]) -> Any:
    """What ``hydra.core.utils.run_job`` does for a single run, through public API only: set the run directory and
    Hydra's config, write ``.hydra/``, configure logging, apply ``env_set`` and ``chdir``, run the callbacks."""
    import copy
    import os

    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobReturn, JobStatus, configure_log, env_override
    from hydra.types import RunMode
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict, read_write

    from transferlab.utils.io import write_bytes_atomic

    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = RunMode.RUN
    HydraConfig.instance().set_config(cfg)  # hydra.run.dir may use ${hydra:…}
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = os.path.abspath(str(cfg.hydra.run.dir))
    HydraConfig.instance().set_config(cfg)
    hydra_cfg = cfg.hydra
    callbacks = [instantiate(callback) for callback in (hydra_cfg.callbacks or {}).values()]
    for callback in callbacks:
        callback.on_run_start(config=cfg, config_name=hydra_cfg.job.config_name)
    task_cfg = copy.deepcopy(cfg)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    output_dir = Path(hydra_cfg.runtime.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    configure_log(hydra_cfg.job_logging, hydra_cfg.verbose)
    hydra_only = copy.deepcopy(HydraConfig.instance().cfg)  # {"hydra": …}, what Hydra writes as hydra.yaml
    if hydra_cfg.output_subdir is not None:  # written atomically: a full disk raises UserError, leaves no file
        files = {"config.yaml": task_cfg, "hydra.yaml": hydra_only, "overrides.yaml": hydra_cfg.overrides.task}
        for filename, content in files.items():
            path = output_dir / str(hydra_cfg.output_subdir) / filename
            write_bytes_atomic(path, OmegaConf.to_yaml(content).encode())
    ret = JobReturn(overrides=list(hydra_cfg.overrides.task), cfg=task_cfg, hydra_cfg=hydra_only)
    ret.task_name = str(hydra_cfg.job.name)
    old_cwd = os.getcwd()
    ret.working_dir = str(output_dir) if hydra_cfg.job.chdir else old_cwd
    try:
        if hydra_cfg.job.chdir:
            os.chdir(output_dir)
        with env_override(hydra_cfg.job.env_set):
            for callback in callbacks:
                callback.on_job_start(config=cfg, task_function=job)
            try:
                ret.return_value = job(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as err:
                ret.return_value = err
                ret.status = JobStatus.FAILED
        for callback in callbacks:
            callback.on_job_end(config=cfg, job_return=ret)
    finally:
        os.chdir(old_cwd)
    for callback in callbacks:
        callback.on_run_end(config=cfg, config_name=hydra_cfg.job.config_name, job_return=ret)
    return ret.return_value  # a failed job's exception is raised here, as Hydra's run does


def callable_module(name: str, function: Callable[..., Any]) -> None:
    """Make module `name` callable as `function`: ``transferlab.train`` is both the module behind
    ``tl-train`` and the API function, because importing a submodule sets the package attribute of that name."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

    sys.modules[name].__class__ = CallableModule
