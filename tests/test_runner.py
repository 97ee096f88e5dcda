"""The trainer `runner.build_trainer` makes: what ``trainer.deterministic=true`` becomes on CUDA and elsewhere."""

from __future__ import annotations

import pytest
import torch

from transferlab import runner
from transferlab.runner import build_trainer, decided_accelerator


@pytest.fixture
def restore_torch_flags():
    """Building a trainer sets torch's global determinism flags: leave them as they were."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


def test_deterministic_on_cuda_warns_instead_of_stopping(make_cfg, monkeypatch, capsys, restore_torch_flags) -> None:
    """Strict determinism would stop a CUDA run at the first pooling/interpolation backward; it runs as "warn",
    with cuDNN's benchmark off (trainer=gpu turns it on), and says so once."""
    monkeypatch.setattr(runner, "decided_accelerator", lambda trainer_cfg: "cuda")
    cfg = make_cfg("trainer.deterministic=true", "trainer.benchmark=true", "logger=none", "callbacks=none")
    build_trainer(cfg, [], [])
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.benchmark is False
    notes = [line for line in capsys.readouterr().err.splitlines() if "deterministic" in line]
    assert len(notes) == 1 and "'warn'" in notes[0] and "no deterministic CUDA kernel" in notes[0], notes


@pytest.mark.parametrize("accelerator", ["cpu", "cuda"])
def test_deterministic_as_asked_elsewhere(make_cfg, monkeypatch, capsys, restore_torch_flags, accelerator) -> None:
    """On a CPU ``true`` stays strict; on CUDA ``false`` stays off."""
    monkeypatch.setattr(runner, "decided_accelerator", lambda trainer_cfg: accelerator)
    requested = "true" if accelerator == "cpu" else "false"
    build_trainer(make_cfg(f"trainer.deterministic={requested}", "logger=none", "callbacks=none"), [], [])
    assert torch.are_deterministic_algorithms_enabled() is (accelerator == "cpu")
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert "deterministic" not in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["cpu", "auto", "gpu"])
def test_decided_accelerator_is_the_one_the_trainer_gets(make_cfg, flag: str) -> None:
    cfg = make_cfg(f"trainer.accelerator={flag}", "logger=none", "callbacks=none")
    decided = decided_accelerator(cfg.trainer)
    if flag == "gpu" and not torch.cuda.is_available():
        assert decided == "gpu"  # nothing to run on: building the trainer says so
        return
    trainer = build_trainer(cfg, [], [])
    assert type(trainer.accelerator).__name__.lower() == f"{decided}accelerator"
