"""Evaluation metrics: the same values under bf16 autocast as in float32, the same values as torchmetrics' own
classes, and no operation in an update that would make the host wait for a GPU."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_restoration_metrics import images, measure, task
from torch.utils._python_dispatch import TorchDispatchMode
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchmetrics.image import PeakSignalNoiseRatio

from transferlab.tasks.metrics import PSNR, ConfusionMatrix, MaskedPSNR, PerClassAccuracy, class_pair_counts


class DeviceSyncs(TorchDispatchMode):
    """Records the operations that, on a CUDA tensor, make the host wait for the GPU: reading a value
    (``item``), sizing a result by its data (``nonzero``, boolean indexing, ``bincount`` even with ``minlength``,
    ``unique``, ``masked_select``) and copying host data to the device (``torch.tensor(...)``: ``lift_fresh``).
    A dispatch mode sees them wherever they are called, torchmetrics' code included."""

    SYNCING = (
        "_local_scalar_dense",
        "nonzero",
        "bincount",
        "unique",
        "masked_select",
        "lift_fresh",
        "repeat_interleave",
    )

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        bool_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ()
        )
        if name.startswith(self.SYNCING) or bool_index:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


def noisy(seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    clean = images(seed, size=size)
    noise = 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + 1))
    return clean, (clean + noise).clamp(0, 1)


# -- precision -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channel", ["rgb", "y"])
def test_restoration_metrics_under_bf16_autocast_equal_float32(channel: str) -> None:
    """Under bf16-mixed training the step (and the validation step) runs in autocast and the network's output is
    bfloat16: PSNR/SSIM must measure that output in float32, not compute in bfloat16 (SSIM 0.945 vs 0.922)."""
    clean, restored = noisy(0)
    output = restored.bfloat16()  # what a bf16-mixed network returns
    expected = measure(task(channel=channel), output.float(), clean)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = measure(task(channel=channel), output, clean)
    assert got["ssim"] == pytest.approx(expected["ssim"], abs=1e-4)
    assert got["psnr"] == pytest.approx(expected["psnr"], abs=1e-3)


# -- the same values as torchmetrics ---------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(
    num_classes=st.integers(2, 7), sizes=st.lists(st.integers(1, 12), min_size=1, max_size=3), seed=st.integers(0, 99)
)
def test_per_class_accuracy_and_confusion_matrix_equal_torchmetrics(
    num_classes: int, sizes: list[int], seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    ours = PerClassAccuracy(num_classes), ConfusionMatrix(num_classes, validate_args=False)
    theirs = MulticlassAccuracy(num_classes, average=None), MulticlassConfusionMatrix(num_classes)
    for size in sizes:  # several updates; some classes may never occur (accuracy 0, as torchmetrics says)
        logits = torch.randn(size, num_classes, generator=generator)
        targets = torch.randint(0, num_classes, (size,), generator=generator)
        for metric in (*ours, *theirs):
            metric.update(logits, targets)
    for mine, reference in zip(ours, theirs):
        assert torch.equal(mine.compute(), reference.compute())


def test_class_pair_counts_by_hand() -> None:
    preds, targets = torch.tensor([0, 2, 2, 1, 2]), torch.tensor([0, 2, 1, 1, 0])
    expected = torch.tensor([[1, 0, 1], [0, 1, 1], [0, 0, 1]])  # rows: true class, columns: predicted
    assert torch.equal(class_pair_counts(preds, targets, 3), expected)
    assert torch.equal(class_pair_counts(torch.nn.functional.one_hot(preds, 3).float(), targets, 3), expected)


def test_per_image_psnr_equals_torchmetrics_over_batches() -> None:
    ours, theirs = PSNR(1.0, dim=(1, 2, 3)), PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
    for seed in range(3):
        clean, restored = noisy(seed, size=8 + 4 * seed)  # batches of different sizes
        ours.update(restored, clean)
        theirs.update(restored, clean)
    assert torch.equal(ours.compute(), theirs.compute())


def test_masked_psnr_equals_the_psnr_of_the_selected_pixels() -> None:
    clean, restored = noisy(3)
    mask = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(4)) > 0.7
    ours = MaskedPSNR(1.0)
    ours.update(restored, clean, mask)
    selected = mask.expand_as(clean)
    reference = PeakSignalNoiseRatio(data_range=1.0)
    reference.update(restored[selected], clean[selected])
    torch.testing.assert_close(ours.compute(), reference.compute())
    assert ours.total.item() == 3 * mask.sum().item()


def test_masked_psnr_on_the_y_channel_measures_only_the_hole() -> None:
    """On the Y channel the hole is the mask's pixels too (its luma is never 0, so the old test measured all)."""
    model = task(mask_channel=True, channel="y")
    clean = torch.full((1, 3, 10, 10), 0.5)
    mask = torch.zeros(1, 1, 10, 10)
    mask[..., 2:5, :] = 1
    restored = clean.clone()
    restored[..., 2:5, :] += 0.1  # inside the hole: 20 dB on the luma, whose weights sum to 219/255
    restored[..., 7, :] += 0.3  # outside it
    values = measure(model, restored, clean, mask=mask)
    assert values["psnr_masked"] == pytest.approx(-20 * torch.log10(torch.tensor(0.1 * 219 / 255)).item(), abs=1e-3)


# -- no host syncs ---------------------------------------------------------------------------------------------
def test_restoration_metric_updates_would_not_wait_for_the_gpu() -> None:
    model = task(mask_channel=True, channel="y", crop_border=2)
    clean, restored = noisy(5)
    mask = (torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(6)) > 0.5).float()
    model.update_quality("val", clean, restored, clean, mask)  # first update: lazy state set-up is not a step
    with DeviceSyncs() as syncs:
        model.update_quality("val", clean, restored, clean, mask)
    assert syncs.found == []


def one_hot_as_on_cuda(tensor: torch.Tensor, num_classes: int = -1) -> torch.Tensor:
    """``F.one_hot`` as its CUDA kernel runs it: with `num_classes` given, a scatter that reads nothing on the host
    (the CPU kernel checks the labels' range with two host reads; without `num_classes` CUDA reads the max too)."""
    assert num_classes > 0, "one_hot without num_classes reads the labels' maximum on the host"
    out = torch.zeros(*tensor.shape, num_classes, dtype=torch.long, device=tensor.device)
    return out.scatter_(-1, tensor.long().unsqueeze(-1), 1)


def test_classification_metric_updates_would_not_wait_for_the_gpu(make_cfg, monkeypatch) -> None:
    from transferlab.runner import build

    monkeypatch.setattr(torch.nn.functional, "one_hot", one_hot_as_on_cuda)
    cfg = make_cfg("model.backbone.name=small_cnn")
    model = build(cfg.model, "model", num_classes=10, class_names=[str(i) for i in range(10)])
    logits, targets = torch.randn(8, 10), torch.arange(8)
    model.update_metrics("val", logits, targets)
    with DeviceSyncs() as syncs:
        model.update_metrics("val", logits, targets)
    assert syncs.found == []
    assert model.confusion["val"].compute().sum().item() == 16


def test_the_sync_detector_sees_what_it_claims() -> None:
    x = torch.randn(6)
    with DeviceSyncs() as syncs:
        x.sum().item()
        _ = x[x > 0]
        torch.bincount(torch.arange(3), minlength=5)
        torch.tensor(3)
    assert len(syncs.found) == 4, syncs.found


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_metric_updates_never_sync_on_cuda_under_bf16_autocast(make_cfg) -> None:
    """On the GPU itself: torch raises at any synchronising call (C++ ones included) during the updates."""
    from transferlab.runner import build

    restoration = task(mask_channel=True, channel="y", crop_border=2).cuda()
    cfg = make_cfg("model.backbone.name=small_cnn")
    classifier = build(cfg.model, "model", num_classes=10, class_names=list("abcdefghij")).cuda()
    clean, restored = (t.cuda() for t in noisy(7))
    mask = (torch.rand(2, 1, 32, 32, device="cuda") > 0.5).float()
    logits, targets = torch.randn(8, 10, device="cuda"), torch.arange(8, device="cuda")
    for armed in (False, True):  # the first update sets states up
        torch.cuda.set_sync_debug_mode("error" if armed else "default")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                restoration.update_quality("val", clean, restored.bfloat16(), clean, mask)
                classifier.update_metrics("val", logits.bfloat16(), targets)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert classifier.confusion["val"].compute().sum().item() == 16
