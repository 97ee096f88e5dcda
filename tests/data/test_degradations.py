"""Degradations are seeded, hit their stated strength, compose from config, and reject bad settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
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


# -- tight statistics and properties ---------------------------------------------------------------------------
def test_gaussian_noise_sigma_within_sampling_error() -> None:
    """σ to ±0.2 %: on 4·10⁶ values the std estimate's relative error is 1/√(8·10⁶) ≈ 0.035 %: 0.2 % is 5.7 SE.

    Mid-grey with σ = 25/255 sits 5σ from 0 and 1: the step does not clip, and even the clipped, quantised
    output of `Degrade` loses < 0.01 % of its spread (quantisation adds 1/12 to the variance in 0–255 units).
    """
    grey = torch.full((1, 2000, 2000), 0.5)
    noisy, _ = GaussianNoise(sigma=25)(grey, empty_mask(grey), seeded(11))
    noise = (noisy - grey) * 255
    assert noise.std().item() == pytest.approx(25, rel=0.002)
    assert noise.mean().item() == pytest.approx(0, abs=0.05)  # 4 SE (25 / 2000)
    clean = torch.full((1, 2000, 2000), 128, dtype=torch.uint8)
    degraded, _ = Degrade([GaussianNoise(sigma=25)])(clean, seeded(12))
    assert (degraded.float() - 128).std().item() == pytest.approx((25**2 + 1 / 12) ** 0.5, rel=0.002)


def test_gaussian_noise_range_samples_sigma_per_image() -> None:
    """A sigma range draws one σ per image, uniformly: σ = low + (high - low)·u, u from the same generator."""
    grey = torch.full((1, 500, 500), 0.5)
    generator = seeded(4)
    u = torch.rand((), generator=seeded(4)).item()
    noisy, _ = GaussianNoise(sigma=(10.0, 40.0))(grey, empty_mask(grey), generator)
    assert ((noisy - grey) * 255).std().item() == pytest.approx(10 + 30 * u, rel=0.01)


def test_sample_and_check_strength() -> None:
    assert sample(7, None) == 7.0 and isinstance(sample(7, None), float)
    u = torch.rand((), generator=seeded(9)).item()
    assert sample([2.0, 6.0], seeded(9)) == pytest.approx(2 + 4 * u)
    GaussianNoise(sigma=0)  # bounds are inclusive
    GaussianNoise(sigma=255)
    GaussianNoise(sigma=[0, 255])
    for bad in (256, [1, 2, 3], [-1, 5], []):
        with pytest.raises(UserError, match=r"gaussian noise sigma must be a number or a \[low, high\] range"):
            GaussianNoise(sigma=bad)
    with pytest.raises(UserError, match=r"within \[0.1, 20.0\], got 25"):
        GaussianBlur(sigma=25)
    with pytest.raises(UserError, match=r"poisson noise peak .* within \[0.001, inf\]"):
        PoissonNoise(peak=0)
    MotionBlur(length=1)
    MotionBlur(length=101)
    for build in (lambda: MotionBlur(length=0.5), lambda: BoxMask(count=51), lambda: BoxMask(size=0.001)):
        with pytest.raises(UserError, match="must be a number or"):
            build()
    for build in (lambda: BrushMask(strokes=51), lambda: BrushMask(vertices=0), lambda: BrushMask(width=0.001)):
        with pytest.raises(UserError, match="must be a number or"):
            build()
    with pytest.raises(UserError, match=r"jpeg quality must be .* within \[1, 100\], got 101"):
        JPEG(quality=101)


def test_steps_keep_a_given_mask_and_default_strengths() -> None:
    image = torch.rand(3, 24, 24, generator=seeded())
    mask = torch.zeros(1, 24, 24)
    mask[:, :4] = 1
    for step in (GaussianNoise(), PoissonNoise(), GaussianBlur(), MotionBlur(), JPEG()):
        assert torch.equal(step(image, mask, seeded())[1], mask)
        assert step.scale == 1 and step.uses_mask is False
    for step in (BoxMask(), BrushMask()):  # new holes add to the old ones
        out, new = step(image, mask, seeded())
        assert step.uses_mask is True and torch.all(new[mask > 0] == 1) and new.sum() > mask.sum()
        assert torch.all(out[:, :4] == 0)
    assert (GaussianNoise().sigma, PoissonNoise().peak, GaussianBlur().sigma) == (25.0, 30.0, 1.5)
    assert (MotionBlur().length, MotionBlur().angle, JPEG().quality, Downscale().scale) == (9.0, (0.0, 180.0), 30, 2)
    assert (BoxMask().count, BoxMask().size) == (1, (0.2, 0.4))
    assert (BrushMask().strokes, BrushMask().vertices, BrushMask().width) == ((1, 4), (4, 10), (0.05, 0.12))


def test_default_motion_blur_is_nine_pixels_at_a_random_angle() -> None:
    impulse = torch.zeros(1, 31, 31)
    impulse[0, 15, 15] = 1.0
    generator = seeded(6)
    out, _ = MotionBlur()(impulse, empty_mask(impulse), generator)
    angle = 180 * torch.rand((), generator=seeded(6)).item()
    torch.testing.assert_close(out[0, 10:21, 10:21], motion_kernel(9.0, angle).flip(0, 1))  # an 11×11 kernel


def test_poisson_noise_is_counts_over_peak() -> None:
    image = torch.rand(3, 16, 16, generator=seeded())
    noisy, _ = PoissonNoise(peak=7)(image, empty_mask(image), seeded(2))
    expected = torch.poisson(image * 7, generator=seeded(2)) / 7
    torch.testing.assert_close(noisy, expected)
    negative = torch.full((1, 4, 4), -0.5)  # below zero counts as zero photons
    assert torch.all(PoissonNoise(peak=7)(negative, empty_mask(negative), seeded())[0] == 0)


def test_gaussian_blur_kernel_spans_three_sigma() -> None:
    """A 2·⌈3σ⌉+1 kernel: an impulse spreads exactly ⌈3σ⌉ pixels each way (reflect padding aside)."""
    impulse = torch.zeros(1, 41, 41)
    impulse[0, 20, 20] = 1.0
    for sigma, reach in ((1.0, 3), (1.5, 5), (2.2, 7)):
        blurred, _ = GaussianBlur(sigma=sigma)(impulse, empty_mask(impulse), seeded())
        row = blurred[0, 20]
        assert row[20 - reach] > 0 and row[20 + reach] > 0
        assert row[20 - reach - 1] == 0 and row[20 + reach + 1] == 0


@pytest.mark.parametrize(("length", "size"), [(1, 3), (2, 3), (3, 5), (4, 5), (9, 11), (10, 11)])
def test_motion_kernel_size_and_symmetry(length: float, size: int) -> None:
    for angle in (0.0, 30.0, 90.0, 135.0):
        kernel = motion_kernel(length, angle)
        assert kernel.shape == (size, size)
        assert kernel.sum().item() == pytest.approx(1.0)
        torch.testing.assert_close(kernel, kernel.flip(0, 1))  # a line through the centre
        assert kernel[size // 2, size // 2] > 0


def test_motion_kernel_direction() -> None:
    """Angles are counter-clockwise from the x axis with y pointing down (image rows)."""
    diagonal = motion_kernel(5, 45.0)
    assert diagonal[2, 4] > 0 and diagonal[4, 2] > 0 and diagonal[2, 2] == 0 and diagonal[4, 4] == 0
    assert (diagonal > 0).sum() == 3 and diagonal.max() == pytest.approx(1 / 3)


def test_box_mask_geometry() -> None:
    image = torch.ones(3, 40, 20)
    for seed in range(5):
        _, mask = BoxMask(count=1, size=0.3)(image, empty_mask(image), seeded(seed))
        rows, cols = mask[0].any(1).nonzero().flatten(), mask[0].any(0).nonzero().flatten()
        assert len(rows) == 12 and len(cols) == 6 and mask.sum() == 72  # one 0.3·40 × 0.3·20 rectangle
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
    _, full = BoxMask(count=1, size=1.0)(image, empty_mask(image), seeded())
    assert full.all()  # a box as large as the image fits (randint's upper bound is exclusive)
    _, tiny = BoxMask(count=3, size=0.01)(image, empty_mask(image), seeded())
    assert 1 <= tiny.sum() <= 3  # at least one pixel per box
    _, none = BoxMask(count=0)(image, empty_mask(image), seeded())
    assert none.sum() == 0


def test_box_mask_positions_cover_the_whole_image() -> None:
    """Over many draws a 1-pixel box lands in every row and column, including the last ones."""
    image = torch.ones(1, 4, 4)
    hits = torch.zeros(1, 4, 4)
    generator = seeded()
    for _ in range(200):
        hits += BoxMask(count=1, size=0.01)(image, empty_mask(image), generator)[1]
    assert torch.all(hits > 0)


def test_brush_mask_geometry() -> None:
    image = torch.ones(3, 64, 64)
    _, none = BrushMask(strokes=0)(image, empty_mask(image), seeded())
    assert none.sum() == 0
    _, thin = BrushMask(strokes=1, vertices=1, width=0.02)(image, empty_mask(image), seeded(3))
    _, thick = BrushMask(strokes=1, vertices=1, width=0.3)(image, empty_mask(image), seeded(3))
    assert 0 < thin.sum() < thick.sum() and torch.all(thick[thin > 0] == 1)  # same path, wider brush
    _, many = BrushMask(strokes=6, vertices=8, width=0.1)(image, empty_mask(image), seeded(3))
    assert many.sum() > thick.sum() / 2 and set(many.unique().tolist()) <= {0.0, 1.0}
    # strokes are random walks of steps (0.1–0.3)·side from a random start: a one-vertex stroke is short
    rows, cols = thin[0].any(1).nonzero().flatten(), thin[0].any(0).nonzero().flatten()
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) <= 0.3 * 64 + 3


def test_degrade_rejects_non_steps_and_quantises_with_rounding() -> None:
    with pytest.raises(UserError, match="degradation steps must be transferlab.data.degradations steps, got 'x'"):
        Degrade(["x"])  # type: ignore[list-item]
    assert Degrade().scale == 1 and Degrade().task_args() == {"scale": 1, "mask_channel": False}
    assert Degrade([Downscale(3)]).scale == 3
    clean = torch.tensor([0, 1, 100, 254, 255], dtype=torch.uint8).view(1, 1, 5)
    degraded, mask = Degrade()(clean)
    assert torch.equal(degraded, clean) and mask.dtype == torch.uint8 and mask.shape == (1, 1, 5)
    assert mask.sum() == 0
    impulse = torch.zeros(1, 5, 5, dtype=torch.uint8)
    impulse[0, 2, 2] = 255
    blurred, _ = Degrade([GaussianBlur(sigma=0.8)])(impulse)
    expected = GaussianBlur(sigma=0.8)(impulse.float() / 255, torch.zeros(1, 5, 5))[0]
    assert torch.equal(blurred, (expected * 255).round().to(torch.uint8))  # rounded, not truncated
    bright, _ = Degrade([PoissonNoise(peak=0.01)])(torch.full((1, 32, 32), 200, dtype=torch.uint8), seeded())
    assert bright.max() == 255 and bright.min() == 0  # clipped into [0, 255], never wrapped around
    dark, _ = Degrade([GaussianNoise(sigma=50)])(torch.zeros(1, 32, 32, dtype=torch.uint8), seeded())
    assert 0.4 < (dark == 0).float().mean() < 0.6  # the negative half of the noise clips to 0


STEPS = {
    "gaussian_noise": lambda: GaussianNoise(sigma=(0, 50)),
    "poisson_noise": lambda: PoissonNoise(peak=(5, 50)),
    "gaussian_blur": lambda: GaussianBlur(sigma=(0.3, 2)),
    "motion_blur": lambda: MotionBlur(length=(2, 7)),
    "jpeg": lambda: JPEG(quality=(5, 95)),
    "box_mask": lambda: BoxMask(count=(1, 3)),
    "brush_mask": lambda: BrushMask(strokes=(1, 3)),
    "downscale": lambda: Downscale(2),
}
RANGE_KEEPING = {"gaussian_blur", "motion_blur", "jpeg", "box_mask", "brush_mask"}
RANDOM = {"gaussian_noise", "poisson_noise", "motion_blur", "jpeg", "box_mask", "brush_mask"}


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(STEPS)),
    channels=st.sampled_from([1, 3]),
    height=st.integers(4, 12).map(lambda n: 2 * n),
    width=st.integers(4, 12).map(lambda n: 2 * n),
    seed=st.integers(0, 2**31 - 1),
)
def test_steps_shapes_ranges_masks_and_seeding(name: str, channels: int, height: int, width: int, seed: int) -> None:
    step = STEPS[name]()
    image = torch.rand(channels, height, width, generator=seeded(seed))
    if name == "jpeg":
        image = image.expand(3, -1, -1) if channels == 1 else image  # libjpeg: grey or RGB
        image = (image * 255).round() / 255
    out, mask = step(image, empty_mask(image), seeded(seed))
    size = (height // step.scale, width // step.scale)
    assert out.shape == (image.shape[0], *size) and mask.shape == (1, *size)
    assert out.dtype == torch.float32 and set(mask.unique().tolist()) <= {0.0, 1.0}
    if name in RANGE_KEEPING:
        assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    if step.uses_mask:
        assert torch.all(out[mask.expand_as(out) > 0] == 0)
        torch.testing.assert_close(out[mask.expand_as(out) == 0], image[mask.expand_as(out) == 0])
    else:
        assert mask.sum() == 0
    again, mask_again = step(image, empty_mask(image), seeded(seed))
    assert torch.equal(out, again) and torch.equal(mask, mask_again)


@pytest.mark.parametrize(
    "step",
    [GaussianNoise((1, 80)), PoissonNoise((1, 100)), GaussianBlur((0.2, 3)), MotionBlur((1, 15)), JPEG((1, 100))],
    ids=lambda step: type(step).__name__,
)
def test_every_strength_range_is_drawn_from_the_generator(step) -> None:
    image = torch.rand(3, 32, 32, generator=seeded())
    for seed in range(5):
        first, again = step(image, empty_mask(image), seeded(seed))[0], step(image, empty_mask(image), seeded(seed))[0]
        assert torch.equal(first, again)


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_random_steps_differ_between_seeds(name: str) -> None:
    step, image = STEPS[name](), torch.rand(3, 32, 32, generator=seeded())
    outputs = [step(image, empty_mask(image), seeded(seed)) for seed in range(4)]
    distinct = {(tuple(out.flatten().tolist()), tuple(mask.flatten().tolist())) for out, mask in outputs}
    assert len(distinct) >= 3


@settings(max_examples=30, deadline=None)
@given(sigma=st.floats(1, 60), seed=st.integers(0, 2**31 - 1))
def test_gaussian_noise_sigma_property(sigma: float, seed: int) -> None:
    """Any σ within 6 standard errors on 2.5·10⁵ values (relative SE 1/√(2n) ≈ 0.14 %): ±0.85 %."""
    grey = torch.full((1, 500, 500), 0.5)
    noisy, _ = GaussianNoise(sigma=sigma)(grey, empty_mask(grey), seeded(seed))
    assert ((noisy - grey) * 255).std().item() == pytest.approx(sigma, rel=0.0085)


@settings(max_examples=30, deadline=None)
@given(low=st.floats(0, 100), width=st.floats(0, 100), seed=st.integers(0, 2**31 - 1))
def test_sample_stays_in_its_range(low: float, width: float, seed: int) -> None:
    value = sample((low, low + width), seeded(seed))
    assert low <= value <= low + width
    assert value == sample((low, low + width), seeded(seed))


@settings(max_examples=25, deadline=None)
@given(factor=st.sampled_from([2, 3, 4]), blocks=st.integers(1, 4), value=st.integers(0, 255), seed=st.integers(0, 99))
def test_degrade_pipeline_output_is_uint8_at_the_scale(factor: int, blocks: int, value: int, seed: int) -> None:
    side = 12 * blocks
    clean = torch.full((3, side, side), value, dtype=torch.uint8)
    pipeline = Degrade([GaussianBlur(0.5), Downscale(factor), BoxMask(count=1, size=0.5)])
    degraded, mask = pipeline(clean, seeded(seed))
    assert degraded.dtype == torch.uint8 and mask.dtype == torch.uint8
    assert degraded.shape == (3, side // factor, side // factor) and mask.shape == (1, side // factor, side // factor)
    assert torch.all(degraded[mask.expand_as(degraded) == 1] == 0)
    assert torch.all(degraded[mask.expand_as(degraded) == 0] == value)  # a flat image stays flat
    assert pipeline.task_args() == {"scale": factor, "mask_channel": True}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GaussianBlur(sigma=0.05), r"gaussian blur sigma must be .* within \[0.1, 20.0\], got 0.05"),
        (lambda: MotionBlur(length=101.5), r"motion blur length must be .* within \[1.0, 101.0\], got 101.5"),
        (lambda: BoxMask(count=51), r"box mask count must be .* within \[0, 50\], got 51"),
        (lambda: BoxMask(size=1.5), r"box mask size must be .* within \[0.01, 1.0\], got 1.5"),
        (lambda: BrushMask(strokes=51), r"brush mask strokes must be .* within \[0, 50\], got 51"),
        (lambda: BrushMask(vertices=51), r"brush mask vertices must be .* within \[1, 50\], got 51"),
        (lambda: BrushMask(width=1.5), r"brush mask width must be .* within \[0.005, 1.0\], got 1.5"),
    ],
)
def test_strength_errors_name_the_setting_and_its_bounds(build, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build()


def test_motion_blur_reflects_at_the_border_and_keeps_the_dtype() -> None:
    flat = torch.full((3, 16, 16), 0.7)
    out, _ = MotionBlur(length=9, angle=30)(flat, empty_mask(flat), seeded())
    torch.testing.assert_close(out, flat)  # reflect padding: no dark frame from zero padding
    double = torch.rand(1, 16, 16, dtype=torch.float64, generator=seeded())
    out64, _ = MotionBlur(length=5, angle=0)(double, empty_mask(double), seeded())
    assert out64.dtype == torch.float64
    row = F.pad(double[None], (2, 2, 2, 2), mode="reflect")[0, 0, 2 + 5]
    torch.testing.assert_close(out64[0, 5], row.unfold(0, 5, 1).mean(-1))  # a horizontal 5-pixel box average


def test_downscale_is_antialiased_bicubic_and_needs_both_sides_divisible() -> None:
    image = torch.rand(3, 24, 24, generator=seeded())
    low, _ = Downscale(3)(image, empty_mask(image), seeded())
    expected = F.interpolate(image[None], size=(8, 8), mode="bicubic", antialias=True, align_corners=False)[0]
    torch.testing.assert_close(low, expected)
    for shape in ((3, 18, 16), (3, 16, 18)):
        with pytest.raises(UserError, match="cannot be down-scaled x3"):
            Downscale(3)(torch.rand(shape), torch.zeros(1, *shape[1:]))


def test_jpeg_clips_out_of_range_values_first() -> None:
    image = torch.rand(3, 16, 16, generator=seeded()) * 2 - 0.5  # [-0.5, 1.5], e.g. after Gaussian noise
    out, _ = JPEG(quality=90)(image, empty_mask(image), seeded())
    clipped, _ = JPEG(quality=90)(image.clamp(0, 1), empty_mask(image), seeded())
    torch.testing.assert_close(out, clipped)


def test_every_box_lies_inside_the_image() -> None:
    image = torch.ones(1, 5, 7)
    generator = seeded()
    for size in (0.01, 0.5):
        for _ in range(100):
            _, mask = BoxMask(count=1, size=size)(image, empty_mask(image), generator)
            assert mask.sum() == max(1, round(size * 5)) * max(1, round(size * 7))  # never cut off by an edge


def brush_polyline(seed: int, side: int, vertices: int) -> list[tuple[float, float]]:
    """The stroke's points from the generator's draws: start uniform, steps (0.1–0.3)·side at uniform angles,
    clamped into the image (what `BrushMask` documents), for one stroke with fixed strengths."""
    generator = seeded(seed)
    u = [torch.rand((), generator=generator).item() for _ in range(2 + 2 * vertices)]
    x, y = u[0] * side, u[1] * side
    points = [(x, y)]
    for k in range(vertices):
        angle, step = u[2 + 2 * k] * 2 * math.pi, (0.1 + 0.2 * u[3 + 2 * k]) * side
        x = min(max(x + step * math.cos(angle), 0), side - 1)
        y = min(max(y + step * math.sin(angle), 0), side - 1)
        points.append((x, y))
    return points


def distance_to_polyline(points: list[tuple[float, float]], side: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64), indexing="ij"
    )
    best = torch.full((side, side), math.inf, dtype=torch.float64)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = (((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-12)).clamp(0, 1)
        best = torch.minimum(best, ((xs - x0 - t * dx) ** 2 + (ys - y0 - t * dy) ** 2).sqrt())
    return best


@pytest.mark.parametrize("seed", range(6))
def test_brush_stroke_is_a_round_capped_polyline_of_its_width(seed: int) -> None:
    side, width = 64, 12  # width fraction 12/64
    image = torch.ones(3, side, side)
    _, mask = BrushMask(strokes=1, vertices=3, width=width / side)(image, empty_mask(image), seeded(seed))
    distance = distance_to_polyline(brush_polyline(seed, side, 3), side)
    assert torch.all(mask[0][distance <= width / 2 - 1.5] == 1)  # all within the brush radius, caps too
    assert torch.all(mask[0][distance > width / 2 + 1.5] == 0)  # nothing beyond it (± rasterisation)


def test_thinnest_brush_is_one_pixel_wide() -> None:
    side = 64
    image = torch.ones(1, side, side)
    for seed in range(6):
        _, mask = BrushMask(strokes=1, vertices=4, width=0.005)(image, empty_mask(image), seeded(seed))
        points = brush_polyline(seed, side, 4)
        length = sum(max(abs(x1 - x0), abs(y1 - y0)) for (x0, y0), (x1, y1) in zip(points, points[1:]))
        assert 0.9 * length <= mask.sum() <= 1.2 * length + 6  # ≈ one pixel per step along the line (+ caps)
