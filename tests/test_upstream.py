"""Canaries for the private upstream APIs transferlab uses (`transferlab.upstream`): one test per module there.

Each fails the moment its upstream symbol changes shape — gone, another kind of object, another signature, or
no longer read by the upstream code our patch relies on — with a message naming the module to revisit, so an
upstream release that breaks a patch fails here first, not in a DDP job or on a full disk.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import MISSING, OmegaConf

SRC = Path(__file__).resolve().parents[1] / "src"


def revisit(module: str, what: str) -> str:
    """The failure message of a canary: what changed upstream and which module to revisit."""
    return f"{what}: upstream changed, revisit transferlab.upstream.{module} (and its docstring's checked versions)"


def params(function: Any) -> list[str]:
    """Parameter names of `function`, ``self`` excluded."""
    return [name for name in inspect.signature(function).parameters if name != "self"]


def test_lightning_ddp_subprocess() -> None:
    from lightning_fabric.strategies.launchers import subprocess_script as fabric_script
    from pytorch_lightning.strategies.launchers import subprocess_script

    import transferlab.runner as runner

    module = "lightning_ddp_subprocess"
    original = inspect.getattr_static(fabric_script, "_hydra_subprocess_cmd", None)
    assert inspect.isfunction(original), revisit(module, "lightning_fabric's _hydra_subprocess_cmd is gone")
    assert params(original) == ["local_rank"], revisit(module, f"_hydra_subprocess_cmd{inspect.signature(original)}")
    assert params(runner.ddp_child_command) == params(original), revisit(module, "ddp_child_command's parameters")
    launch = inspect.getsource(subprocess_script._SubprocessScriptLauncher._call_children_scripts)
    assert "_hydra_subprocess_cmd(" in launch, revisit(module, "the DDP launcher no longer calls _hydra_subprocess_cmd")
    assert subprocess_script._hydra_subprocess_cmd is runner.ddp_child_command, revisit(module, "the patch is not in")


def test_lightning_sigterm() -> None:
    import pytorch_lightning as pl

    from transferlab.upstream.lightning_sigterm import request_stop

    module = "lightning_sigterm"
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    connector = getattr(trainer, "_signal_connector", None)
    assert connector is not None, revisit(module, "Trainer._signal_connector is gone")
    assert connector.received_sigterm is False, revisit(module, "_signal_connector.received_sigterm is not a bool")
    request_stop(trainer)
    assert trainer.received_sigterm is True, revisit(module, "Trainer.received_sigterm does not read the flag we set")
    loops = inspect.getsource(pl.loops.training_epoch_loop)
    assert "received_sigterm" in loops, revisit(module, "the training loop no longer stops on received_sigterm")


def test_lightning_accelerator() -> None:
    from pytorch_lightning.trainer.connectors.accelerator_connector import _AcceleratorConnector
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from transferlab.upstream.lightning_accelerator import auto_accelerator, gpu_accelerator_backend

    module = "lightning_accelerator"
    for name in ("_choose_auto_accelerator", "_choose_gpu_accelerator_backend"):
        method = inspect.getattr_static(_AcceleratorConnector, name, None)
        assert isinstance(method, staticmethod), revisit(module, f"_AcceleratorConnector.{name} is {method!r}")
        assert params(method.__func__) == [], revisit(module, f"{name}{inspect.signature(method.__func__)}")
    chosen = auto_accelerator()
    assert chosen in {"cpu", "cuda", "mps", "tpu"}, revisit(module, f"accelerator=auto became {chosen!r}")
    assert (chosen == "cuda") == torch.cuda.is_available(), revisit(module, f"accelerator=auto became {chosen!r}")
    try:
        backend: str | None = gpu_accelerator_backend()
    except MisconfigurationException:  # Lightning's answer on a machine without a GPU
        backend = None
    assert backend in {"cuda", "mps", None}, revisit(module, f"accelerator=gpu became {backend!r}")
    assert (backend == "cuda") == torch.cuda.is_available(), revisit(module, f"accelerator=gpu became {backend!r}")


def test_lightning_ddp_kwargs() -> None:
    from pytorch_lightning.strategies import DDPStrategy, StrategyRegistry

    from transferlab.upstream.lightning_ddp_kwargs import ddp_kwargs

    module = "lightning_ddp_kwargs"
    named = StrategyRegistry.get("ddp_find_unused_parameters_true")
    assert ddp_kwargs(named) == {"find_unused_parameters": True}, revisit(module, "DDPStrategy._ddp_kwargs")
    assert ddp_kwargs(DDPStrategy()) == {}, revisit(module, "DDPStrategy._ddp_kwargs of a plain DDP strategy")
    assert ddp_kwargs(object()) == {}


def test_lightning_wandb_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from pytorch_lightning.loggers import WandbLogger

    from transferlab.upstream.lightning_wandb_logger import drop_unset_anonymous, started_run

    module = "lightning_wandb_logger"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    init = getattr(logger, "_wandb_init", None)
    assert isinstance(init, dict), revisit(module, f"WandbLogger._wandb_init is {init!r}")
    assert "anonymous" in init and init["anonymous"] is None, revisit(module, "Lightning no longer passes anonymous")
    drop_unset_anonymous(logger)
    assert "anonymous" not in logger._wandb_init, revisit(module, "anonymous=None still reaches wandb.init")
    assert "_experiment" in vars(logger), revisit(module, "WandbLogger._experiment is gone")
    assert started_run(logger) is None, revisit(module, "WandbLogger._experiment is set before any run started")


def test_tensorboard_file_writer(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    from transferlab.upstream.tensorboard_file_writer import add_summaries

    module = "tensorboard_file_writer"
    assert params(SummaryWriter._get_file_writer) == [], revisit(module, "SummaryWriter._get_file_writer's signature")
    writer = SummaryWriter(str(tmp_path))
    file_writer = writer._get_file_writer()
    assert params(file_writer.add_summary)[:1] == ["summary"], revisit(module, "FileWriter.add_summary's signature")
    add_summaries(writer, *hparams({"lr": 0.1}, {"val/acc": 0.5}))
    writer.close()
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1 and b"_hparams_" in events[0].read_bytes(), revisit(module, "no hparams in the event file")


def test_torch_buffers() -> None:
    from transferlab.upstream.torch_buffers import persistent_buffer_names

    module = torch.nn.Module()
    module.register_buffer("kept", torch.zeros(1))
    module.register_buffer("scratch", torch.zeros(1), persistent=False)
    assert isinstance(getattr(module, "_non_persistent_buffers_set", None), set), revisit("torch_buffers", "the set")
    assert persistent_buffer_names(module) == list(module.state_dict()) == ["kept"], revisit("torch_buffers", "names")


def test_torch_dynamo() -> None:
    import torch._dynamo.exc as dynamo_exc

    from transferlab.upstream.torch_dynamo import is_dynamo_error

    base = getattr(dynamo_exc, "TorchDynamoException", None)
    assert isinstance(base, type) and issubclass(base, Exception), revisit("torch_dynamo", "TorchDynamoException")
    wrapper = dynamo_exc.BackendCompilerFailed  # what a backend's (inductor's) failure is raised as
    assert issubclass(wrapper, base), revisit("torch_dynamo", "BackendCompilerFailed is no TorchDynamoException")
    assert is_dynamo_error(base("x")) and not is_dynamo_error(RuntimeError("x"))


def test_hydra_save_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import hydra.core.utils as hydra_utils

    from transferlab.cli import write_hydra_files_atomically

    module = "hydra_save_config"
    original = inspect.getattr_static(hydra_utils, "_save_config", None)
    assert inspect.isfunction(original), revisit(module, "hydra.core.utils._save_config is gone")
    assert params(original) == ["cfg", "filename", "output_dir"], revisit(module, f"{inspect.signature(original)}")
    calls = inspect.getsource(hydra_utils.run_job)
    assert calls.count("_save_config(") == 3, revisit(module, "run_job no longer writes .hydra/ with _save_config")
    monkeypatch.setattr(hydra_utils, "_save_config", original)  # restored after the test
    write_hydra_files_atomically()
    assert hydra_utils._save_config is not original, revisit(module, "the patch is not in")
    assert params(hydra_utils._save_config) == params(original)


def test_hydra_job_return() -> None:
    from hydra.core.utils import JobReturn, JobStatus

    from transferlab.upstream.hydra_job_return import store_failure, stored_value

    module = "hydra_job_return"
    fields = [field.name for field in dataclasses.fields(JobReturn)]
    assert "_return_value" in fields, revisit(module, f"JobReturn's fields are {fields}")
    ret = JobReturn(status=JobStatus.FAILED)
    error = ValueError("diverged")
    store_failure(ret, error)
    assert stored_value(ret) is error
    with pytest.raises(ValueError, match="diverged"):  # the public property re-raises what we stored
        _ = ret.return_value
    done = JobReturn(status=JobStatus.COMPLETED)
    done.return_value = {"val/acc": 1.0}
    assert stored_value(done) == {"val/acc": 1.0}, revisit(module, "return_value is not stored in _return_value")


def test_hydra_override() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Override

    from transferlab.upstream.hydra_override import override_value

    module = "hydra_override"
    method = inspect.getattr_static(Override, "_get_value_element_as_str", None)
    assert isinstance(method, staticmethod), revisit(module, f"Override._get_value_element_as_str is {method!r}")
    assert params(method.__func__)[:1] == ["value"], revisit(module, f"{inspect.signature(method.__func__)}")
    for value in ("a b", "x,y", "=", 0.1, True, [1, 2]):
        parsed = OverridesParser.create().parse_override(f"key={override_value(value)}")
        assert parsed.value() == value, revisit(module, f"{value!r} does not read back")


def test_hydra_basic_sweeper() -> None:
    from hydra_plugins.transferlab_sweeper.basic import TransferlabBasicSweeper
    from transferlab.upstream.hydra_basic_sweeper import BasicSweeper, BasicSweeperConf

    module = "hydra_basic_sweeper"
    assert issubclass(TransferlabBasicSweeper, BasicSweeper)
    assert dataclasses.is_dataclass(BasicSweeperConf), revisit(module, "BasicSweeperConf is no dataclass")
    assert {"max_batch_size", "params"} <= {f.name for f in dataclasses.fields(BasicSweeperConf)}, revisit(module, "")
    expected = {
        "_parse_config": [],
        "split_arguments": ["overrides", "max_batch_size"],
        "get_job_batch": [],
        "is_done": [],
        "validate_batch_is_legal": ["batch"],
        "sweep": ["arguments"],
    }
    for name, names in expected.items():
        method = getattr(BasicSweeper, name, None)
        assert callable(method), revisit(module, f"BasicSweeper.{name} is gone")
        assert params(method) == names, revisit(module, f"BasicSweeper.{name}{inspect.signature(method)}")
    sweeper = BasicSweeper(max_batch_size=None)
    attributes = {"config", "launcher", "hydra_context", "overrides", "max_batch_size"}
    assert attributes <= set(vars(sweeper)), revisit(module, f"BasicSweeper's attributes are {sorted(vars(sweeper))}")


def test_omegaconf_nodes() -> None:
    from transferlab.upstream import omegaconf_nodes
    from transferlab.utils.checks import leaves

    cfg = OmegaConf.create({"a": 1, "b": "${a}", "c": None, "d": "???", "e": [1, 2], "f": {"g": "x"}})
    assert omegaconf_nodes.raw_value(omegaconf_nodes.raw_child(cfg, "a")) == 1, revisit("omegaconf_nodes", "_value")
    assert omegaconf_nodes.is_none(omegaconf_nodes.raw_child(cfg, "c")), revisit("omegaconf_nodes", "_is_none")
    assert dict(leaves(cfg)) == {"a": 1, "c": None, "d": MISSING, "e": [1, 2], "f.g": "x"}


def test_lightning_model_checkpoint_overrides() -> None:
    """`transferlab.callbacks.ModelCheckpoint` overrides two private methods of Lightning's (a subclass must)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from transferlab import callbacks

    where = "transferlab.callbacks.ModelCheckpoint (listed in transferlab.upstream)"
    source = inspect.getsource(ModelCheckpoint)
    for name, names in {
        "_save_checkpoint": ["trainer", "filepath"],
        "_save_last_checkpoint": ["trainer", "monitor_candidates"],
    }.items():
        ours, theirs = getattr(callbacks.ModelCheckpoint, name), getattr(ModelCheckpoint, name, None)
        assert theirs is not None and params(theirs) == names, f"ModelCheckpoint.{name} changed: revisit {where}"
        assert params(ours) == names and f"self.{name}(" in source, f"Lightning no longer calls {name}: revisit {where}"


def _private_imports(path: Path) -> list[str]:
    """``import a._b`` / ``from a._b import c`` / ``from a import _c`` of another package in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in ("transferlab", "hydra_plugins", "__future__"):
                continue
            if any(part.startswith("_") and not part.startswith("__") for part in name.split(".")):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {name}")
    return found


def test_private_imports_live_in_upstream() -> None:
    """The rule: another package's private names are imported in `transferlab.upstream` only."""
    upstream = SRC / "transferlab" / "upstream"
    found = [
        hit for path in sorted(SRC.rglob("*.py")) if upstream not in path.parents for hit in _private_imports(path)
    ]
    assert not found, f"private upstream imports outside transferlab.upstream (move each there, with a canary): {found}"


def test_plugins_stay_light_with_their_upstream_modules() -> None:
    """Hydra imports every plugin at start-up (``--help`` too): through `transferlab.upstream` they import no torch
    and no Lightning."""
    import subprocess
    import sys

    plugins = [
        "hydra_plugins.transferlab_sweeper.basic",
        "hydra_plugins.transferlab_launcher.parallel",
        "hydra_plugins.transferlab_launcher.slurm",
    ]
    script = f"import sys\nfor name in {plugins}: __import__(name)\n" + (
        "print(sorted(m for m in ('torch', 'pytorch_lightning', 'lightning', 'lightning_fabric') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=SRC)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]
