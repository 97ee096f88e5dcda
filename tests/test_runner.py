"""Background checkpoint writes snapshot the state in host memory: what is written is the state at save time."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from torch import nn

from transferlab.runner import HostSnapshotCheckpointIO


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
