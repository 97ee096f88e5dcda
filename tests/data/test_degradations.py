"""Degradations are seeded, hit their stated strength, compose from config, and reject bad settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torchvision.io import decode_jpeg, encode_jpeg

from transferlab.data.degradations import (
    JPEG,
    BoxMask,
    BrushMask,
    Degrade,
    Downscale,
    GaussianBlur,
    GaussianNoise,
    MotionBlur,
    PoissonNoise,
    motion_kernel,
    sample,
)
from transferlab.utils.config import config_dir
from transferlab.utils.errors import UserError

GREY = torch.full((3, 64, 64), 0.5)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def empty_mask(image: torch.Tensor) -> torch.Tensor:
    return torch.zeros(1, *image.shape[-2:])


def test_gaussian_noise_has_its_sigma_and_is_seeded() -> None:
    step = GaussianNoise(sigma=25)
    noisy, _ = step(GREY, empty_mask(GREY), seeded(1))
    assert (noisy - GREY).std().item() * 255 == pytest.approx(25, rel=0.03)
    again, _ = step(GREY, empty_mask(GREY), seeded(1))
    other, _ = step(GREY, empty_mask(GREY), seeded(2))
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)


def test_sigma_range_is_sampled_within_bounds() -> None:
    generator = seeded()
    values = [sample((5.0, 50.0), generator) for _ in range(200)]
    assert 5 <= min(values) < 10 and 45 < max(values) <= 50
    step = GaussianNoise(sigma=(10, 10.0001))  # a degenerate range still hits its value
    noisy, _ = step(GREY, empty_mask(GREY), seeded())
    assert (noisy - GREY).std().item() * 255 == pytest.approx(10, rel=0.03)


def test_poisson_noise_variance_is_value_over_peak() -> None:
    noisy, _ = PoissonNoise(peak=20)(GREY, empty_mask(GREY), seeded())
    assert noisy.mean().item() == pytest.approx(0.5, abs=0.01)
    assert noisy.var().item() == pytest.approx(0.5 / 20, rel=0.05)


def test_gaussian_blur_spreads_an_impulse_by_sigma() -> None:
    impulse = torch.zeros(1, 41, 41)
    impulse[0, 20, 20] = 1.0
    blurred, _ = GaussianBlur(sigma=2.0)(impulse, empty_mask(impulse), seeded())
    profile = blurred[0].sum(dim=0)
    xs = torch.arange(41.0) - 20
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert (profile * xs**2).sum().sqrt().item() == pytest.approx(2.0, rel=0.05)


def test_motion_blur_kernel_is_a_normalised_line_of_its_length() -> None:
    kernel = motion_kernel(9, 0.0)
    assert kernel.sum().item() == pytest.approx(1.0)
    assert (kernel > 0).sum().item() == 9 and (kernel[kernel.shape[0] // 2] > 0).sum().item() == 9
    vertical = motion_kernel(5, 90.0)
    assert (vertical[:, vertical.shape[1] // 2] > 0).sum().item() == 5
    image = torch.rand(3, 32, 32, generator=seeded())
    blurred, _ = MotionBlur(length=7, angle=45)(image, empty_mask(image), seeded())
    assert blurred.shape == image.shape and blurred.std() < image.std()


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_downscale_hits_its_scale(factor: int) -> None:
    image = torch.rand(3, 48, 48, generator=seeded())
    low, mask = Downscale(factor)(image, empty_mask(image), seeded())
    assert low.shape == (3, 48 // factor, 48 // factor) and mask.shape == (1, 48 // factor, 48 // factor)
    flat = torch.full((3, 48, 48), 0.3)
    torch.testing.assert_close(Downscale(factor)(flat, empty_mask(flat))[0], torch.full_like(low, 0.3))


def test_jpeg_is_libjpeg_at_the_stated_quality() -> None:
    image = torch.rand(3, 32, 32, generator=seeded())
    out, _ = JPEG(quality=20)(image, empty_mask(image), seeded())
    pixels = (image * 255).round().to(torch.uint8)
    expected = decode_jpeg(encode_jpeg(pixels, quality=20)).float() / 255
    torch.testing.assert_close(out, expected)
    higher, _ = JPEG(quality=95)(image, empty_mask(image), seeded())
    assert (higher - image).abs().mean() < (out - image).abs().mean()


def test_box_and_brush_masks_zero_the_missing_region() -> None:
    image = torch.rand(3, 64, 64, generator=seeded())
    for step in (BoxMask(count=2, size=0.25), BrushMask(strokes=2)):
        out, mask = step(image, empty_mask(image), seeded())
        assert mask.shape == (1, 64, 64) and 0 < mask.mean() < 0.9
        assert torch.all(out[mask.expand_as(out) > 0] == 0)
        torch.testing.assert_close(out[mask.expand_as(out) == 0], image[mask.expand_as(out) == 0])
        again, mask_again = step(image, empty_mask(image), seeded())
        assert torch.equal(mask, mask_again)
    _, box = BoxMask(count=1, size=0.25)(image, empty_mask(image), seeded())
    assert box.sum().item() == 16 * 16


def test_degrade_chains_quantises_and_reports_task_args() -> None:
    clean = (torch.rand(3, 48, 48, generator=seeded()) * 255).to(torch.uint8)
    pipeline = Degrade([Downscale(4), GaussianNoise(5), BoxMask(1, 0.3)])
    degraded, mask = pipeline(clean, seeded(3))
    assert degraded.dtype == torch.uint8 and degraded.shape == (3, 12, 12) and mask.shape == (1, 12, 12)
    assert pipeline.task_args() == {"scale": 4, "mask_channel": True}
    assert torch.equal(pipeline(clean, seeded(3))[0], degraded)
    assert Degrade([GaussianNoise(25)]).task_args() == {"scale": 1, "mask_channel": False}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Downscale(5), "downscale factor must be one of"),
        (lambda: Degrade([Downscale(2), Downscale(4)]), "down-scale x8 in total"),
        (lambda: GaussianNoise(sigma=-1), "gaussian noise sigma must be"),
        (lambda: JPEG(quality=(0, 50)), "jpeg quality must be"),
        (lambda: Downscale(3)(torch.rand(3, 16, 16), torch.zeros(1, 16, 16)), "cannot be down-scaled x3"),
    ],
)
def test_bad_settings_are_user_errors(build, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build()


@pytest.mark.parametrize("preset", sorted(p.stem for p in (config_dir() / "data" / "degrade").glob("*.yaml")))
def test_degrade_presets_compose_and_run(make_cfg, preset: str) -> None:
    cfg = make_cfg("data=photos", f"data/degrade={preset}", tiny=False)
    pipeline = instantiate(cfg.data.degrade)
    clean = (torch.rand(3, 48, 48, generator=seeded()) * 255).to(torch.uint8)
    degraded, mask = pipeline(clean, seeded())
    assert degraded.shape[-1] * pipeline.scale == 48 and mask.shape[-2:] == degraded.shape[-2:]
    assert Path(cfg.paths.output_dir).is_dir()
