"""PSNR/SSIM as RestorationTask computes them: identical images give PSNR = inf and SSIM = 1, both are
symmetric, PSNR falls as noise grows, PSNR is the mean of per-image PSNRs, and `metrics` (data_range,
channel, crop_border) shape what is measured."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from transferlab.tasks.restoration import RestorationTask, rgb_to_y
from transferlab.utils.config import config_dir
from transferlab.utils.errors import UserError

# The shipped restoration settings (losses, metrics, optimizer), so a test states only what it varies.
BASE = OmegaConf.to_container(OmegaConf.load(config_dir() / "model" / "base" / "restoration.yaml").model)
SETTINGS = {key: BASE[key] for key in ("optimizer", "loss", "perceptual")}
EDSR = {"_target_": "transferlab.nets.edsr.EDSR", "channels": 4, "blocks": 1}
DNCNN = {"_target_": "transferlab.nets.dncnn.DnCNN", "depth": 2, "channels": 4}


def task(mask_channel: bool = False, scale: int = 1, **metrics) -> RestorationTask:
    return RestorationTask(
        net=EDSR if scale > 1 else DNCNN,
        metrics={**BASE["metrics"], **metrics},
        mask_channel=mask_channel,
        scale=scale,
        **SETTINGS,
    )


def images(seed: int, n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def measure(model: RestorationTask, restored, clean, degraded=None, mask=None, stage: str = "test") -> dict:
    mask = torch.zeros_like(clean[:, :1]) if mask is None else mask
    model.update_quality(stage, clean if degraded is None else degraded, restored, clean, mask)
    return {k.split("/", 1)[1]: v.item() for k, v in model.epoch_metrics(stage).items()}


# -- identical images, symmetry, monotonicity ------------------------------------------------------------------
def test_identical_images_give_infinite_psnr_and_unit_ssim() -> None:
    clean = images(0)
    values = measure(task(), clean, clean)
    assert values["psnr"] == math.inf and values["psnr_input"] == math.inf
    assert values["ssim"] == pytest.approx(1.0, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), low=st.floats(0.005, 0.06), factor=st.floats(1.5, 4.0))
def test_psnr_ssim_symmetric_and_monotonic_in_noise(seed: int, low: float, factor: float) -> None:
    model = task()
    clean = 0.25 + 0.5 * images(seed)  # errors up to 0.24 stay in [0, 1]: no clipping to bend the curve
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed + 1)).clamp(-1, 1)
    slightly, heavily = clean + low * noise, clean + low * factor * noise
    a = measure(model, slightly, clean, degraded=heavily)
    b = measure(model, clean, slightly, degraded=clean)
    assert a["psnr"] == pytest.approx(b["psnr"], rel=1e-6) and a["ssim"] == pytest.approx(b["ssim"], rel=1e-5)
    assert a["psnr"] > a["psnr_input"]  # more noise, lower PSNR
    # scaling the error by `factor` lowers PSNR by exactly 20·log10(factor) dB, image by image
    assert a["psnr"] - a["psnr_input"] == pytest.approx(20 * math.log10(factor), rel=1e-4)
    heavy = measure(model, heavily, clean)
    assert heavy["ssim"] < a["ssim"] < 1.0 and heavy["psnr"] == pytest.approx(a["psnr_input"], rel=1e-6)


def test_psnr_is_the_mean_of_per_image_psnrs() -> None:
    clean = torch.full((2, 3, 8, 8), 0.5)
    restored = clean.clone()
    restored[0] += 0.1  # 20 dB
    restored[1] += 0.01  # 40 dB; the PSNR of the pooled MSE would be 23.0 dB
    values = measure(task(), restored, clean)
    assert values["psnr"] == pytest.approx(30.0, abs=1e-3)


def test_metrics_accumulate_over_batches_and_reset_each_epoch() -> None:
    model, clean = task(), torch.full((1, 3, 8, 8), 0.5)
    model.update_quality("val", clean, clean + 0.1, clean, torch.zeros(1, 1, 8, 8))
    model.update_quality("val", clean, clean + 0.01, clean, torch.zeros(1, 1, 8, 8))
    assert model.epoch_metrics("val")["val/psnr"].item() == pytest.approx(30.0, abs=1e-3)
    assert model.epoch_metrics("val") == {}  # reset: nothing updated since
    assert model.epoch_metrics("train") == {}  # no quality metrics while training
    assert set(model.quality) == {"val", "test"}


def test_ssim_matches_torchmetrics_on_the_batch() -> None:
    clean, restored = images(1), images(2)
    values = measure(task(), restored, clean)
    assert values["ssim"] == pytest.approx(structural_similarity_index_measure(restored, clean, data_range=1.0).item())


# -- what the config changes ---------------------------------------------------------------------------------
def test_data_range_scales_what_is_measured() -> None:
    clean = torch.full((1, 3, 12, 12), 0.5)
    restored = clean + 0.1
    assert measure(task(data_range=255.0), restored, clean)["psnr"] == pytest.approx(20.0, abs=1e-3)
    model = task(data_range=255.0)
    torch.testing.assert_close(model.for_metric(clean), clean * 255)
    assert model.quality["val"]["psnr"].data_range.item() == 255.0
    assert model.quality["val"]["ssim"].data_range == 255.0
    # a wrong range would change SSIM (its constants scale with the range)
    noisy = (clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert measure(model, noisy, clean)["ssim"] == pytest.approx(
        structural_similarity_index_measure(noisy, clean, data_range=1.0).item(), rel=1e-5
    )


def test_crop_border_and_y_channel() -> None:
    clean = images(3, size=12)
    model = task(channel="y", crop_border=2)
    torch.testing.assert_close(model.for_metric(clean), rgb_to_y(clean)[..., 2:-2, 2:-2])
    restored = clean.clone()
    restored[..., :2, :] = 1 - restored[..., :2, :]  # errors only in the cropped border
    assert measure(model, restored, clean)["psnr"] == math.inf
    restored[..., 5, 5] += 0.2
    expected = [peak_signal_noise_ratio(rgb_to_y(restored[i : i + 1])[..., 2:-2, 2:-2],
                                        rgb_to_y(clean[i : i + 1])[..., 2:-2, 2:-2], data_range=1.0)
                for i in range(2)]  # fmt: skip
    assert measure(model, restored, clean)["psnr"] == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    torch.testing.assert_close(task().for_metric(clean), clean)  # defaults: rgb, no crop, range 1
    torch.testing.assert_close(task(crop_border=1).for_metric(clean), clean[..., 1:-1, 1:-1])


def test_rgb_to_y_is_bt601_luma() -> None:
    rgb = images(4, n=1, size=4)
    y = (16 + 65.481 * rgb[:, 0] + 128.553 * rgb[:, 1] + 24.966 * rgb[:, 2]) / 255
    torch.testing.assert_close(rgb_to_y(rgb), y[:, None])
    torch.testing.assert_close(rgb_to_y(torch.zeros(1, 3, 1, 1)), torch.full((1, 1, 1, 1), 16 / 255))
    torch.testing.assert_close(rgb_to_y(torch.ones(1, 3, 1, 1)), torch.full((1, 1, 1, 1), 235 / 255))


def test_check_metrics_defaults_and_errors() -> None:
    full = {"data_range": 1.0, "channel": "rgb", "crop_border": 0}
    assert RestorationTask.check_metrics(full) == full
    assert RestorationTask.check_metrics({**full, "channel": "y", "crop_border": 4})["crop_border"] == 4
    with pytest.raises(UserError) as err:
        RestorationTask.check_metrics({**full, "range": 1})
    assert str(err.value) == "unknown model.metrics keys ['range']; use data_range, channel, crop_border"
    with pytest.raises(UserError) as err:
        RestorationTask.check_metrics({"channel": "y"})
    assert str(err.value) == (
        "model.metrics lacks ['crop_border', 'data_range']: set each of data_range, channel, crop_border"
    )
    with pytest.raises(UserError) as err:
        RestorationTask.check_metrics({**full, "channel": "ycbcr"})
    assert str(err.value) == "model.metrics.channel must be 'rgb' or 'y', got 'ycbcr'"
    for bad in ({"data_range": 0}, {"data_range": -1.0}, {"crop_border": -1}):
        with pytest.raises(UserError) as err:
            RestorationTask.check_metrics({**full, **bad})
        assert str(err.value) == "model.metrics.data_range must be > 0 and model.metrics.crop_border >= 0"


# -- the input baseline and inpainting ------------------------------------------------------------------------
def test_input_psnr_uses_the_degraded_image_bicubic_upscaled_for_sr() -> None:
    model = task(scale=2)
    clean = images(5, n=1, size=16)
    low = F.interpolate(clean, size=(8, 8), mode="bicubic", antialias=True)
    up = F.interpolate(low, size=(16, 16), mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(model.upscaled_input(low, clean.shape[-2:]), up)
    assert model.upscaled_input(clean, clean.shape[-2:]) is clean
    values = measure(model, clean, clean, degraded=low)
    assert values["psnr_input"] == pytest.approx(peak_signal_noise_ratio(up, clean, data_range=1.0).item(), rel=1e-5)
    checker = (torch.arange(16).view(4, 4) % 2 == torch.arange(4).view(4, 1) % 2).float().expand(1, 3, 4, 4)
    raw = F.interpolate(checker, size=(12, 12), mode="bicubic", align_corners=False)
    assert raw.min() < 0 and raw.max() > 1  # bicubic overshoots both ways ...
    torch.testing.assert_close(model.upscaled_input(checker, torch.Size([12, 12])), raw.clamp(0, 1))  # ... clamped


def test_input_psnr_stays_its_own_metric_when_a_batch_matches_the_output() -> None:
    model, clean = task(), torch.full((1, 3, 8, 8), 0.5)
    model.update_quality("val", clean + 0.1, clean + 0.1, clean, torch.zeros(1, 1, 8, 8))  # identity "restorer"
    model.update_quality("val", clean + 0.1, clean + 0.01, clean, torch.zeros(1, 1, 8, 8))
    values = model.epoch_metrics("val")
    assert values["val/psnr_input"].item() == pytest.approx(20.0, abs=1e-3)
    assert values["val/psnr"].item() == pytest.approx(30.0, abs=1e-3)


def test_masked_psnr_only_for_inpainting_and_only_inside_the_hole() -> None:
    assert "psnr_masked" not in task().quality["val"]
    model = task(mask_channel=True, crop_border=1)
    clean = torch.full((1, 3, 10, 10), 0.5)
    mask = torch.zeros(1, 1, 10, 10)
    mask[..., 2:5, :] = 1
    restored = clean.clone()
    restored[..., 2:5, :] += 0.1  # inside the hole: 20 dB there
    restored[..., 7, :] += 0.3  # outside it: only the whole-image PSNR sees this
    values = measure(model, restored, clean, mask=mask)
    assert values["psnr_masked"] == pytest.approx(20.0, abs=1e-3)
    assert values["psnr"] < 20.0
    # the crop applies to the mask too: a hole only in the cropped border leaves nothing to measure
    border = torch.zeros(1, 1, 10, 10)
    border[..., 0, :] = 1
    mask_seen = model.for_metric(border.expand_as(clean)) > 0
    assert not mask_seen.any()
