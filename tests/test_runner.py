"""What `transferlab.runner` builds: background checkpoint writes that snapshot the state in host memory (what
is written is the state at save time) and stop at the first failed write, and what ``trainer.deterministic=true``
becomes on CUDA and elsewhere."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from torch import nn

from transferlab import runner
from transferlab.runner import AtomicCheckpointIO, HostSnapshotCheckpointIO, build_trainer, decided_accelerator
from transferlab.utils.io import WriteFailed


class HeldWriter(TorchCheckpointIO):
    """Writes only once `release` is set (training goes on meanwhile), keeping what it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.release, self.handed = threading.Event(), []

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        assert self.release.wait(timeout=30)
        self.handed.append(checkpoint)
        super().save_checkpoint(checkpoint, path, storage_options)


def test_the_writer_gets_a_host_copy_independent_of_the_live_parameters(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()  # momentum buffers exist: optimizer state travels too
    at_save = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = optimizer.state_dict()["state"][0]["momentum_buffer"].clone()
    writer = HeldWriter()
    io = HostSnapshotCheckpointIO(writer)
    checkpoint = {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()], "epoch": 3}
    io.save_checkpoint(checkpoint, tmp_path / "last.ckpt")
    with torch.no_grad():  # training goes on before the background write happens
        for p in model.parameters():
            p.add_(1.0)
    optimizer.state[model.weight]["momentum_buffer"].zero_()
    writer.release.set()
    io.teardown()

    handed = writer.handed[0]["state_dict"]
    live = dict(model.named_parameters())
    for name, tensor in handed.items():
        assert tensor.device.type == "cpu" and tensor.untyped_storage().data_ptr() != live[name].data_ptr()
    written = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert written["epoch"] == 3
    assert all(torch.equal(written["state_dict"][k], v) for k, v in at_save.items())
    assert torch.equal(written["optimizer_states"][0]["state"][0]["momentum_buffer"], momentum)


class GatedAtomicWriter(AtomicCheckpointIO):
    """The atomic writer, each write waiting until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        assert self.gate.wait(timeout=30)
        super().save_checkpoint(checkpoint, path, storage_options)


def test_after_a_failed_background_write_nothing_more_is_written_and_the_error_comes_once(small_disk) -> None:
    path = small_disk(256 * 1024) / "checkpoints" / "last.ckpt"
    writer = GatedAtomicWriter()
    io = HostSnapshotCheckpointIO(writer)
    writer.gate.set()
    io.save_checkpoint({"w": torch.zeros(100), "epoch": 0}, path)
    assert io.failure(wait=True) is None
    writer.gate.clear()  # the next write is slow: another save is queued behind it before it fails
    io.save_checkpoint({"w": torch.zeros(200_000), "epoch": 1}, path)  # 800 kB: fails in the background
    io.save_checkpoint({"w": torch.zeros(100), "epoch": 2}, path)  # must not replace epoch 0 once that failed
    writer.gate.set()
    assert isinstance(io.failure(wait=True), WriteFailed)
    with pytest.raises(WriteFailed, match="last.ckpt: no space left on device"):
        io.save_checkpoint({"w": torch.zeros(100), "epoch": 3}, path)  # the training thread hears of it here
    io.teardown()  # raised once: teardown (Lightning's, after the exception) does not raise it again
    assert torch.load(path, weights_only=True)["epoch"] == 0  # the last good checkpoint, whole
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_failed_background_write_surfaces_at_teardown(small_disk) -> None:
    path = small_disk(256 * 1024) / "best.ckpt"
    io = HostSnapshotCheckpointIO()
    io.save_checkpoint({"w": torch.zeros(200_000)}, path)
    with pytest.raises(WriteFailed):
        io.teardown()  # the end of `fit`: the last write failed
    assert not path.parent.joinpath("best.ckpt").exists() and list(path.parent.iterdir()) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU box with -m gpu)")
def test_a_save_takes_no_gpu_memory_and_writes_the_state_at_save_time(tmp_path: Path) -> None:
    weights = torch.randn(64, 2**20, device="cuda")  # 256 MiB of "parameters"
    expected = weights.cpu()
    writer = HeldWriter()
    io = HostSnapshotCheckpointIO(writer)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    io.save_checkpoint({"state_dict": {"w": weights}}, tmp_path / "last.ckpt")
    assert torch.cuda.max_memory_allocated() - before < 2**20  # no device-side clone
    weights.add_(1.0)
    writer.release.set()
    io.teardown()
    handed = writer.handed[0]["state_dict"]["w"]
    assert handed.device.type == "cpu" and handed.is_pinned()
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]["w"], expected)


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
