"""Degradations for restoration: small composable functions applied on the fly to clean patches.

Each step maps a float image in [0, 1] (C, H, W) and a missing-region mask (1, H, W; 1 = missing) to new
ones, drawing its randomness from the `torch.Generator` it is given, so a seeded generator reproduces a
degraded sample exactly. Strengths are either fixed (``sigma: 25``) or sampled uniformly per image from a
range (``sigma: [5, 50]``). `Degrade` chains steps in config order (BasicSR-style); noise σ is in 0–255
units, as papers state it.

Libraries: blur, JPEG and resizing are torchvision's and torch's; noise and the motion kernel are a few lines here
because their randomness must come from the generator passed in (seeded per validation sample), which
torchvision.transforms.v2's GaussianNoise/GaussianBlur, drawing from the global RNG, cannot take.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Generator, Tensor
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.v2 import functional as TF

from transferlab.utils.errors import UserError

Strength = float | Sequence[float]
Pair = tuple[Tensor, Tensor]
SCALES = (2, 3, 4)


def sample(value: Strength, generator: torch.Generator | None) -> float:
    """A fixed value, or one drawn uniformly from ``[low, high]``."""
    if isinstance(value, int | float):
        return float(value)
    low, high = value
    return low + (high - low) * torch.rand((), generator=generator).item()


def check_strength(name: str, value: Strength, low: float, high: float = math.inf) -> None:
    values = [value] if isinstance(value, int | float) else list(value)
    if len(values) not in (1, 2) or not all(low <= v <= high for v in values):
        raise UserError(
            f"{name} must be a number or a [low, high] range within [{low}, {high}], got {value}. "
            "Fix it under data.degrade.steps"
        )


class Step(abc.ABC):
    """One degradation; subclasses implement `apply` on an image and its mask."""

    scale: int = 1
    uses_mask: bool = False

    def __call__(self, image: Tensor, mask: Tensor, generator: Generator | None = None) -> Pair:
        return self.apply(image, mask, generator)

    @abc.abstractmethod
    def apply(self, image: Tensor, mask: Tensor, generator: Generator | None) -> Pair:
        """The degraded image and the updated mask."""


class GaussianNoise(Step):
    """Additive white Gaussian noise of standard deviation `sigma` (0–255 units), not clipped."""

    def __init__(self, sigma: Strength = 25.0) -> None:
        check_strength("gaussian noise sigma", sigma, 0.0, 255.0)
        self.sigma = sigma

    def apply(self, image: Tensor, mask: Tensor, generator: Generator | None) -> Pair:
        sigma = sample(self.sigma, generator) / 255.0
        return image + sigma * torch.randn(image.shape, generator=generator), mask


class PoissonNoise(Step):
    """Shot noise: pixel value × `peak` photons counted, then divided back (variance = value / peak)."""

    def __init__(self, peak: Strength = 30.0) -> None:
        check_strength("poisson noise peak", peak, 1e-3)
        self.peak = peak

    def apply(self, image: Tensor, mask: Tensor, generator: Generator | None) -> Pair:
        peak = sample(self.peak, generator)
        return torch.poisson(image.clamp(min=0) * peak, generator=generator) / peak, mask


class GaussianBlur(Step):
    """Isotropic Gaussian blur of standard deviation `sigma` pixels (kernel ±3σ)."""

    def __init__(self, sigma: Strength = 1.5) -> None:
        check_strength("gaussian blur sigma", sigma, 0.1, 20.0)
        self.sigma = sigma

    def apply(self, image: Tensor, mask: Tensor, generator: Generator | None) -> Pair:
        sigma = sample(self.sigma, generator)
        size = 2 * math.ceil(3 * sigma) + 1
        return TF.gaussian_blur(image, [size, size], [sigma, sigma]), mask


def motion_kernel(length: float, angle_deg: float) -> torch.Tensor:
    """A normalised line kernel of `length` pixels at `angle_deg`: the blur of a straight camera shake."""
    size = 2 * math.ceil(length / 2) + 1
    centre = size // 2
    t = torch.linspace(-(length - 1) / 2, (length - 1) / 2, steps=max(2, 4 * size))
    angle = math.radians(angle_deg)
    xs = (centre + t * math.cos(angle)).round().long()
    ys = (centre - t * math.sin(angle)).round().long()
    kernel = torch.zeros(size, size)
    kernel[ys, xs] = 1.0
    return kernel / kernel.sum()


class MotionBlur(Step):
    """Camera shake: a line kernel of `length` pixels at a random (or given) angle, reflect-padded."""

    def __init__(self, length: Strength = 9.0, angle: Strength = (0.0, 180.0)) -> None:
        check_strength("motion blur length", length, 1.0, 101.0)
        self.length, self.angle = length, angle

    def apply(self, image: Tensor, mask: Tensor, generator: Generator | None) -> Pair:
        kernel = motion_kernel(sample(self.length, generator), sample(self.angle, generator))
        pad = kernel.shape[-1] // 2
        channels = image.shape[0]
        padded = F.pad(image[None], (pad, pad, pad, pad), mode="reflect")
        weight = kernel.to(image.dtype).expand(channels, 1, *kernel.shape)
        return F.conv2d(padded, weight, groups=channels)[0], mask


class Downscale(Step):
    """Bicubic down-scaling by an integer `factor` (×2/×3/×4), anti-aliased, as in SR benchmarks."""

    def __init__(self, factor: int = 2) -> None:
        if factor not in SCALES:
            raise UserError(f"downscale factor must be one of {SCALES}, got {factor}")
        self.scale = factor

    def apply(self, image: Tensor, mask: Tensor, generator: Generator | None) -> Pair:
        h, w = image.shape[-2:]
        if h % self.scale or w % self.scale:
            raise UserError(f"a {h}x{w} patch cannot be down-scaled x{self.scale}. Use a patch size divisible by it")
        size = (h // self.scale, w // self.scale)
        low = F.interpolate(image[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0]
        return low, F.interpolate(mask[None], size=size, mode="nearest")[0]


class JPEG(Step):
    """JPEG compression at `quality` (1–100, fixed or a range), through torchvision's libjpeg codec."""

    def __init__(self, quality: Strength = 30) -> None:
        check_strength("jpeg quality", quality, 1, 100)
        self.quality = quality

    def apply(self, image: Tensor, mask: Tensor, generator: Generator | None) -> Pair:
        quality = round(sample(self.quality, generator))
        pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        return decode_jpeg(encode_jpeg(pixels, quality=quality)).float() / 255, mask


class BoxMask(Step):
    """Missing rectangles: `count` boxes with sides a `size` fraction of the image side, filled with zero."""

    uses_mask = True

    def __init__(self, count: Strength = 1, size: Strength = (0.2, 0.4)) -> None:
        check_strength("box mask count", count, 0, 50)
        check_strength("box mask size", size, 0.01, 1.0)
        self.count, self.size = count, size

    def apply(self, image: Tensor, mask: Tensor, generator: Generator | None) -> Pair:
        h, w = image.shape[-2:]
        mask = mask.clone()
        for _ in range(round(sample(self.count, generator))):
            bh = max(1, round(sample(self.size, generator) * h))
            bw = max(1, round(sample(self.size, generator) * w))
            top = int(torch.randint(0, h - bh + 1, (), generator=generator))
            left = int(torch.randint(0, w - bw + 1, (), generator=generator))
            mask[:, top : top + bh, left : left + bw] = 1.0
        return image * (1 - mask), mask


class BrushMask(Step):
    """Free-form holes: `strokes` random-walk brush strokes (DeepFill v2 style), filled with zero."""

    uses_mask = True

    def __init__(
        self, strokes: Strength = (1, 4), vertices: Strength = (4, 10), width: Strength = (0.05, 0.12)
    ) -> None:
        check_strength("brush mask strokes", strokes, 0, 50)
        check_strength("brush mask vertices", vertices, 1, 50)
        check_strength("brush mask width", width, 0.005, 1.0)
        self.strokes, self.vertices, self.width = strokes, vertices, width

    def apply(self, image: Tensor, mask: Tensor, generator: Generator | None) -> Pair:
        from PIL import Image, ImageDraw

        h, w = image.shape[-2:]
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        rand = lambda: torch.rand((), generator=generator).item()  # noqa: E731
        for _ in range(round(sample(self.strokes, generator))):
            width = max(1, round(sample(self.width, generator) * min(h, w)))
            x, y = rand() * w, rand() * h
            points = [(x, y)]
            for _ in range(round(sample(self.vertices, generator))):
                angle, step = rand() * 2 * math.pi, (0.1 + 0.2 * rand()) * min(h, w)
                x = min(max(x + step * math.cos(angle), 0), w - 1)
                y = min(max(y + step * math.sin(angle), 0), h - 1)
                points.append((x, y))
            draw.line(points, fill=255, width=width, joint="curve")
            for px, py in points:  # round caps and joints
                draw.ellipse((px - width / 2, py - width / 2, px + width / 2, py + width / 2), fill=255)
        stroke = TF.pil_to_tensor(canvas).float() / 255
        mask = torch.maximum(mask, (stroke > 0.5).float())
        return image * (1 - mask), mask


class Degrade:
    """A chain of steps applied in order; knows the overall down-scale factor and whether masks are made."""

    def __init__(self, steps: Sequence[Step] = ()) -> None:
        self.steps = list(steps)
        for step in self.steps:
            if not isinstance(step, Step):
                raise UserError(f"degradation steps must be transferlab.data.degradations steps, got {step!r}")
        self.scale = math.prod(step.scale for step in self.steps)
        if self.scale not in (1, *SCALES):
            raise UserError(f"the degradations down-scale x{self.scale} in total; use one Downscale of x2, x3 or x4")
        self.uses_mask = any(step.uses_mask for step in self.steps)

    def __call__(
        self, clean: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 clean image (C, H, W) → (degraded uint8 image, missing-region mask uint8 (1, H', W'))."""
        image = clean.float() / 255
        mask = torch.zeros(1, *image.shape[-2:])
        for step in self.steps:
            image, mask = step(image, mask, generator)
        degraded = (image.clamp(0, 1) * 255).round().to(torch.uint8)  # stored like a real degraded photo
        return degraded, (mask > 0.5).to(torch.uint8)

    def task_args(self) -> dict[str, int | bool]:
        """What a restoration model must know about its inputs: the up-scale to undo and the mask channel."""
        return {"scale": self.scale, "mask_channel": self.uses_mask}
