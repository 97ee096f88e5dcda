"""data.on_gpu=null keeps data on the GPU only when it fits with room to spare; data.on_gpu=true refuses what
cannot fit. The GPU is faked (its free memory and the trainer's device), so the decision runs on a CPU."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import make_data
from transferlab.data import device_memory
from transferlab.data.photos import PhotoDataModule
from transferlab.runner import build
from transferlab.utils.errors import UserError


def fake_gpu(monkeypatch, datamodule, free: int) -> None:
    """`datamodule` trains on "cuda:0", which has `free` bytes free."""
    monkeypatch.setattr(datamodule, "training_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(device_memory.torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))


def uploaded_bytes(datamodule) -> int:
    """Bytes the device path holds once every split's loader exists (on the CPU "device")."""
    loaders = [datamodule.train_dataloader(), datamodule.val_dataloader(), datamodule.test_dataloader()]
    tensors = {id(t): t for t in _tensors(datamodule._on_device)}
    for loader in loaders:  # what a loader holds beyond the shared upload (none should)
        tensors.update({id(t): t for t in _tensors(getattr(loader, "samples", {}))})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _tensors(v)]
    data = getattr(value, "data", None)  # PhotoBank: the photos in one flat tensor
    return [data] if isinstance(data, torch.Tensor) else []


@pytest.fixture
def shapes(make_cfg):
    def make(on_gpu: str):
        datamodule = build(make_cfg(f"data.on_gpu={on_gpu}").data, "data")
        datamodule.setup("fit")
        return datamodule

    return make


def photos(on_gpu: bool | None) -> PhotoDataModule:
    datamodule = make_data(PhotoDataModule, "photos", patch_size=16, val_patches=6, batch_size=2, on_gpu=on_gpu)
    datamodule.setup("fit")
    return datamodule


@pytest.mark.parametrize("kind", ["shapes", "photos"])
def test_the_size_estimate_is_what_the_device_path_uploads(shapes, kind: str) -> None:
    datamodule = shapes("true") if kind == "shapes" else photos(True)
    estimate = datamodule.device_bytes()
    assert estimate > 0 and uploaded_bytes(datamodule) == estimate


@pytest.mark.parametrize("kind", ["shapes", "photos"])
def test_auto_keeps_data_on_the_gpu_only_within_a_share_of_its_free_memory(shapes, monkeypatch, kind: str) -> None:
    datamodule = shapes("null") if kind == "shapes" else photos(None)
    size = datamodule.device_bytes()
    fake_gpu(monkeypatch, datamodule, free=int(size / device_memory.DEVICE_DATA_SHARE) + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert datamodule.device_resident()

    datamodule = shapes("null") if kind == "shapes" else photos(None)
    fake_gpu(monkeypatch, datamodule, free=2 * size)  # it would fit, but leave too little for training
    with pytest.warns(
        UserWarning,
        match=r"data.on_gpu=null \(auto\): .*GiB, more than 25% .*CPU DataLoader.*"
        r"data.on_gpu=true",
    ) as caught:
        loaders = [datamodule.train_dataloader(), datamodule.val_dataloader()]
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert all(isinstance(loader, DataLoader) for loader in loaders) and not datamodule._on_device


@pytest.mark.parametrize("kind", ["shapes", "photos"])
def test_forcing_data_that_cannot_fit_onto_the_gpu_is_one_line_error(shapes, monkeypatch, kind: str) -> None:
    datamodule = shapes("true") if kind == "shapes" else photos(True)
    fake_gpu(monkeypatch, datamodule, free=datamodule.device_bytes() - 1)
    with pytest.raises(UserError, match=r"data.on_gpu=true: .* takes .* GiB but cuda:0 has only .* free\. Set data"):
        datamodule.train_dataloader()
    datamodule = shapes("true") if kind == "shapes" else photos(True)
    fake_gpu(monkeypatch, datamodule, free=datamodule.device_bytes())  # forced: all of the free memory may be used
    assert datamodule.device_resident()
