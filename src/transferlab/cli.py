"""The ``tl-train``, ``tl-eval``, ``tl-predict`` and ``tl-export`` commands: compose and check the config, then run it.

Hydra reports a typo in an override as a multi-line error, and a value out of range would surface only
after torch and Lightning are imported (seconds) and a run directory exists. So each command first composes
its config with Hydra's compose API (exactly what the run will see; in a sweep, every value of every swept
key), checks every value against its rule (`transferlab.utils.checks`), that the output directory can be
written and that named files exist, and only then imports the run's module and hands over to Hydra. Any
problem is one line, ``error: <what>. <how to fix>``, exit status 2, before anything is written.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transferlab.constants import CHECKPOINT_DIR, CKPT_PATH_HINT, LAST_CHECKPOINT, METRICS_FILE
from transferlab.utils.errors import EXIT_USER_ERROR, UserError, closest, report_user_errors
from transferlab.utils.extras import SUBMITIT_LAUNCHERS, check_loggers, require_slurm

MAX_COMPOSITIONS = 32  # a sweep is checked value by value (each swept key's values with the others' first)
_HYDRA_FLAG_ARGS = {"-m", "--multirun"}


def train() -> None:
    """``tl-train``: fit, then test the best checkpoint (`transferlab.train`)."""
    _launch("train", "transferlab.train")


def evaluate() -> None:
    """``tl-eval``: test a checkpoint (`transferlab.evaluate`)."""
    _launch("eval", "transferlab.evaluate")


def predict() -> None:
    """``tl-predict``: run a checkpoint on image files (`transferlab.predict`)."""
    _launch("predict", "transferlab.predict")


def export() -> None:
    """``tl-export``: write a checkpoint as an ONNX or TorchScript inference model (`transferlab.export`)."""
    _launch("export", "transferlab.export")


def _launch(config_name: str, module: str) -> None:
    try:
        preflight(config_name, sys.argv[1:])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)

    def run(cfg: Any) -> Any:  # torch and Lightning load here, only when there is a job to run
        return importlib.import_module(module).run(cfg)

    run.__module__ = module  # Hydra names the job (train.log, …) and DDP ranks re-run it by this module
    hydra_app(config_name)(run)()


# -- the Hydra application around a command's run(cfg) ----------------------------------------------
entry_module = "transferlab.train"  # the module a DDP child rank re-runs (`runner.ddp_child_command`)


def hydra_app(config_name: str) -> Callable[[Callable[[Any], Any]], Callable[[], Any]]:
    """Turn ``run(cfg)`` into a Hydra CLI on transferlab's configs, printing `UserError`s as one line.

    Nothing here imports torch: Hydra answers ``--help``, ``--cfg`` and ``--info`` without calling `run`.
    """
    import hydra
    from omegaconf.errors import MissingMandatoryValue

    from transferlab.sweeps import sweep_job
    from transferlab.utils.config import config_dir

    def wrap(run: Callable[[Any], Any]) -> Callable[[], Any]:
        global entry_module
        entry_module = _module_name(run)

        @functools.wraps(run)
        def checked(cfg: Any) -> Any:
            try:
                return run(cfg)
            except MissingMandatoryValue as err:
                key = err.full_key or "a value"
                raise UserError(f"{key} is required and has no value. Pass {key}=<value> on the command line") from err

        main = hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(
            report_user_errors(sweep_job(isolated_job(checked)))
        )

        @functools.wraps(main)
        def launched(*args: Any, **kwargs: Any) -> Any:  # the command runs: a failed write is one line from here on
            report_user_errors(check_lightning_choice)()  # `python -m transferlab.train` has no preflight
            write_hydra_files_atomically()
            quiet_failed_writer_threads()
            return main(*args, **kwargs)

        return launched

    return wrap


def check_lightning_choice() -> None:
    """Raise `UserError` for a ``TRANSFERLAB_LIGHTNING`` naming no installed package (see `upstream.lightning`)."""
    from transferlab.upstream.lightning import LightningChoiceError, select

    try:
        select()
    except LightningChoiceError as err:
        raise UserError(str(err)) from None


def write_hydra_files_atomically() -> None:
    """Make Hydra write a job's ``.hydra/*.yaml`` through `utils.io.write_bytes_atomic`.

    Hydra opens them with a plain ``open()`` before the job runs (outside `report_user_errors`): on a full disk it
    leaves an empty ``config.yaml`` and ends in a traceback. Through the atomic writer a failure leaves no file and
    is the one ``error:`` line (exit 2). See `transferlab.upstream.hydra_save_config` (tested by
    tests/test_disk_full.py).
    """
    from omegaconf import OmegaConf

    from transferlab.upstream import hydra_save_config
    from transferlab.utils.io import write_bytes_atomic

    def save_config(cfg: Any, filename: str, output_dir: Path) -> None:
        try:
            write_bytes_atomic(Path(output_dir) / filename, OmegaConf.to_yaml(cfg).encode())
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    hydra_save_config.install(save_config)


def quiet_failed_writer_threads() -> None:
    """A library's writer thread that dies of a failed write (TensorBoard's, on a full disk) prints no traceback.

    The library raises the same error on the training thread at its next write, where `report_user_errors` turns
    it into the one ``error:`` line; Python would also print it, with a traceback, when the thread ends.
    """
    import threading

    from transferlab.utils.io import write_fault

    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or write_fault(args.exc_value) is None:
            default(args)

    threading.excepthook = hook


# What Lightning's DDP launcher puts into os.environ of the launching process for its child ranks.
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK")


def isolated_job(run: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Leave no distributed state behind a job, so the next job of an in-process multirun starts its own.

    Lightning keeps the process group (and the port in ``MASTER_PORT``) alive after `fit`/`test`; a second
    DDP job in the same process would reuse the dead group of the first one and fail talking to its
    exited ranks.
    """

    @functools.wraps(run)
    def wrapper(cfg: Any) -> Any:
        saved = {name: os.environ.get(name) for name in _DDP_ENV}
        try:
            return run(cfg)
        finally:
            torch = sys.modules.get("torch")  # imported by the run, if it got that far
            if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    return wrapper


def _module_name(fn: Callable[..., Any]) -> str:
    """Importable name of `fn`'s module, also when it runs as ``python -m transferlab.train``."""
    if fn.__module__ == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        return spec.name if spec is not None else fn.__module__
    return fn.__module__


def preflight(config_name: str, args: list[str]) -> None:
    """Compose the config of `args` as the run will and raise `UserError` for anything wrong in it.

    Hydra's own options (``--help``, ``--cfg``, ``--info``, ``-c``, …) are left to Hydra. ``--config-dir``
    (``-cd``), a folder of the user's configs beside transferlab's, is checked too: it joins the search path.
    """
    check_lightning_choice()
    args = _config_dir_as_searchpath(args)
    if args is None or any(arg.startswith("-") and arg not in _HYDRA_FLAG_ARGS for arg in args):
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from transferlab.utils.config import config_dir
    from transferlab.utils.resolvers import register_resolvers

    register_resolvers()
    multirun = any(arg in _HYDRA_FLAG_ARGS for arg in args)
    overrides = [arg for arg in args if arg not in _HYDRA_FLAG_ARGS]
    for arg in overrides:  # first: without the extra, its keys (hydra.launcher.partition=…) would not compose
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "hydra/launcher" and value in SUBMITIT_LAUNCHERS:
            require_slurm(value)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for combination in _combinations(overrides, multirun):
            try:
                cfg = compose(config_name=config_name, overrides=combination, return_hydra_config=True)
            except Exception as err:  # Hydra's composition errors: turned into one line with a suggestion
                raise _composition_error(err, config_name, combination) from None
            _check(cfg, multirun)
    GlobalHydra.instance().clear()


def _config_dir_as_searchpath(args: list[str]) -> list[str] | None:
    """`args` with ``--config-dir DIR`` (``-cd``) written as the override Hydra applies for it, ``hydra.searchpath``.

    An installed transferlab's own configs stay the primary config; the user's folder adds options
    (``data/mydata.yaml`` → ``data=mydata``). None when it cannot be written so (a ``hydra.searchpath`` override
    is given too): Hydra then composes it alone, as before.
    """
    dirs: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        flag, eq, value = arg.partition("=")
        if flag in ("--config-dir", "-cd"):
            if not eq:
                index += 1
                value = args[index] if index < len(args) else ""
            dirs.append(value)
        else:
            rest.append(arg)
        index += 1
    if not dirs:
        return args
    if any(arg.split("=", 1)[0] == "hydra.searchpath" for arg in rest):
        return None
    for folder in dirs:
        if not Path(folder).expanduser().is_dir():
            raise UserError(f"--config-dir {folder} is not a folder. Pass the folder that holds your config groups")
    paths = ",".join(f"'file://{Path(folder).expanduser().absolute()}'" for folder in dirs)
    return [*rest, f"hydra.searchpath=[{paths}]"]


def _combinations(overrides: list[str], multirun: bool) -> Iterator[list[str]]:
    """The override lists to compose: the sweep's first job, then each other value of each swept key."""
    if not multirun:
        yield overrides
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        raise UserError(f"cannot read the overrides: {_first_line(err)}. Quote values with spaces or symbols") from None
    choices: list[list[str]] = []
    for override, text in zip(parsed, overrides):
        if not override.is_sweep_override():
            choices.append([text])
            continue
        try:  # choice and range sweeps; an interval (an Optuna search space) is left to the sweeper
            values = list(override.sweep_string_iterator())
        except Exception:
            values = []
        choices.append([f"{override.get_key_element()}={value}" for value in values] or [])
    yield [options[0] for options in choices if options]
    count = 1
    for index, options in enumerate(choices):
        for option in options[1:]:
            if count >= MAX_COMPOSITIONS:
                return
            count += 1
            yield [option if i == index else other[0] for i, other in enumerate(choices) if other]


def _composition_error(err: Exception, config_name: str, overrides: list[str]) -> UserError:
    """Hydra's composition error as one actionable line."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(err, OverrideParseException):
        return UserError(f"cannot read the overrides: {_first_line(err)}. Quote values with spaces or symbols")
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        options = sorted(o for o in err.options or [] if not o.startswith("base/"))  # bases are not options
        listed = f"Available: {', '.join(options)}." if options else "The group has no options."
        return UserError(f"no {group} config named '{name}'. {listed}{closest(name, options)}")
    message = f"{err} {err.__cause__ or ''}"
    if message.startswith("Could not override '"):
        key = message.split("'")[1]
        return UserError(
            f"unknown key {key}.{_similar_keys(config_name, overrides, key)} "
            f"To add a key the config does not have, write +{key}=<value>"
        )
    if "An item is already at '" in message:
        key = message.split("An item is already at '")[1].split("'")[0]
        return UserError(f"{key} is already in the config. Override it without the +: {key}=<value>")
    return UserError(f"{_first_line(err)}. Check the overrides")


def _similar_keys(config_name: str, overrides: list[str], key: str) -> str:
    """`closest` over the keys next to `key` in the config composed without the bad override."""
    from hydra import compose
    from omegaconf import DictConfig, OmegaConf

    from transferlab.utils.config import config_dir

    others = [text for text in overrides if text.lstrip("+~").split("=", 1)[0] != key]
    try:
        cfg = compose(config_name=config_name, overrides=others)
    except Exception:
        return ""
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return ""
    siblings = {str(name) for name in node}
    if not parent:  # a top-level typo may be a config group (data=…, model=…)
        siblings |= {path.name for path in config_dir().iterdir() if path.is_dir()}
    return closest(key, sorted(f"{parent}.{name}" if parent else name for name in siblings))


def _check(cfg: object, multirun: bool) -> None:
    from omegaconf import DictConfig, OmegaConf

    from transferlab.utils.checks import check_values

    assert isinstance(cfg, DictConfig)
    check_values(cfg)
    check_launcher(cfg)
    check_loggers(cfg)
    run_dir = OmegaConf.select(cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    check_writable(Path(str(run_dir)), "hydra.sweep.dir" if multirun else "hydra.run.dir")
    for key, what in (("ckpt_path", "checkpoint"), ("input", "input"), ("mask", "mask image")):
        value = cfg.get(key)
        if isinstance(value, str) and value not in ("???", "last") and not Path(value).expanduser().exists():
            if key == "ckpt_path" and cfg.get("train") and deleted_at_clean_end(Path(value).expanduser()):
                continue  # tl-train says what can be done instead (transferlab.train.refuse_missing_last)
            fix = CKPT_PATH_HINT if key == "ckpt_path" else f"Check {key}=…"
            raise UserError(f"{what} {Path(value)} does not exist. {fix}")


def deleted_at_clean_end(path: Path) -> bool:
    """Whether `path` is the last.ckpt of a run that finished cleanly (it wrote metrics.json), which deleted it."""
    finished = (path.parent.parent / METRICS_FILE).is_file()
    return path.name == LAST_CHECKPOINT and path.parent.name == CHECKPOINT_DIR and not path.exists() and finished


def check_launcher(cfg: Any) -> None:
    """Every launcher setting derived from the config resolves (e.g. the GPUs a SLURM job asks for), and
    submit-and-go (``hydra.launcher.wait=false``) is asked only of a sweeper that needs no results."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    launcher = OmegaConf.select(cfg, "hydra.launcher")
    if str((launcher or {}).get("_target_", "")).endswith(".ParallelLauncher"):  # hydra/launcher=parallel
        for key in ("jobs", "threads_per_job"):
            value = launcher.get(key)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise UserError(f"hydra.launcher.{key}={value} must be a whole number ≥ 1, or null (decided at launch)")
    for key in launcher or ():
        try:
            launcher[key]
        except InterpolationResolutionError as err:
            prefix = "ValueError raised while resolving interpolation: "  # a transferlab resolver's own message
            if str(err).startswith(prefix):
                raise UserError(f"hydra.launcher.{key}: {_first_line(err).removeprefix(prefix)}") from None
    choices = OmegaConf.select(cfg, "hydra.runtime.choices") or {}
    if choices.get("hydra/launcher") in SUBMITIT_LAUNCHERS:  # also when an experiment config picks it
        require_slurm(choices["hydra/launcher"])
    sweeper = choices.get("hydra/sweeper", "basic")
    if OmegaConf.select(cfg, "hydra.launcher.wait") is False and sweeper != "basic":
        name = "sweep=optuna" if "optuna" in str(sweeper) else f"hydra/sweeper={sweeper}"
        raise UserError(
            f"hydra.launcher.wait=false cannot run {name}: it picks each new job from the results of the "
            "finished ones, so it must wait for them. Drop hydra.launcher.wait=false (run the sweep inside a "
            "SLURM job or a tmux session to close the laptop meanwhile)"
        )


def check_writable(path: Path, key: str) -> None:
    """Raise `UserError` unless a directory can be created at `path` (tried next to it, then removed)."""
    path = path.expanduser().absolute()
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    else:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".tl-write-check-", dir=existing))
        except OSError as err:
            problem = f"no folder can be created in {existing} ({err.strerror})"
    if problem is not None:
        raise UserError(f"cannot create the output folder {path}: {problem}. Pass {key}=<a folder you can write>")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__).rstrip(".:")
