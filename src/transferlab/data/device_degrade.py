"""The restoration degradations of `degradations.py`, applied to a whole batch on its device.

`DeviceDegrade.from_degrade` reads a CPU `Degrade` (the object Hydra builds from ``conf/data/degrade``) and
returns one batched step per CPU step. Each step draws every sample's own strength from the same
distribution as the CPU step (a fixed value, or uniform over ``[low, high]``) and applies all samples at
once, so a GPU run never sends patches through the CPU. Every setting is read from the CPU step objects.

On fixed parameters the steps compute what the CPU steps compute, with the same formulas in the same float
precision: noise, motion kernels, down-scaling, boxes and CPU JPEG bit for bit, Gaussian blur up to the
convolution's summation order (< 1e-6). Brush strokes re-implement PIL's rasteriser (pixel-identical on the
preset's strokes, measured; PIL's ellipses are approximated for wide pens). Per-sample sizes that differ
within a batch (blur kernels, box, stroke and vertex counts) are padded to the largest size the configuration
allows and masked, never looped over, so nothing here reads a tensor back on the host: no ``.item()``, no
boolean-mask indexing. The one exception is JPEG: the codec takes a Python quality and produces bytes, so
that step reads the qualities back, and it runs on the CPU one image at a time unless the batch is on a GPU
where torchvision's nvJPEG encoder and decoder work.

Randomness comes from torch's RNG on the batch's device, or from the `torch.Generator` passed in (which
must live on that device); a seeded generator reproduces a degraded batch exactly.

Libraries: kornia has Gaussian and motion blur and a differentiable JPEG, but the distributions are defined by the
CPU steps (torchvision's blur and JPEG codec, see degradations.py); these reproduce them per sample on the device,
JPEG through torchvision's nvJPEG codec where the device has one (tests/data/test_device_degrade.py).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Generator, Tensor
from torchvision.io import decode_jpeg, encode_jpeg

from transferlab.data import degradations as cpu
from transferlab.data.device_jpeg import bytes_to_host, decode_jpeg_on_device, encode_jpeg_on_device
from transferlab.utils.errors import UserError

Params = dict[str, Tensor]
Pair = tuple[Tensor, Tensor]
Range = tuple[float, float]  # a fixed strength is (value, value)


def strength_range(value: cpu.Strength) -> Range:
    """A CPU step's strength (a number, or a [low, high] sequence such as Hydra's ListConfig) as (low, high)."""
    if isinstance(value, int | float):
        return float(value), float(value)
    low, high = value
    return float(low), float(high)


def uniform(value: Range, shape: tuple[int, ...], device: torch.device, generator: Generator | None) -> Tensor:
    """Per-sample strengths (float64): the fixed value, or ``low + (high - low) * u`` with u a float32 uniform,
    exactly the arithmetic of the CPU `sample`."""
    low, high = value
    if low == high:
        return torch.full(shape, low, dtype=torch.float64, device=device)
    u = torch.rand(shape, device=device, generator=generator).double()
    return low + (high - low) * u


def _per_sample(values: Tensor) -> Tensor:
    """A (B,) vector shaped to broadcast over (B, C, H, W), in float32 like a Python scalar in a CPU step."""
    return values.float().view(-1, 1, 1, 1)


def reflect_index(index: Tensor, size: int) -> Tensor:
    """Where a reflect-padded coordinate reads from (mirror without repeating the edge, as ``F.pad``'s
    reflect mode), folded repeatedly so padding wider than the image still has a source."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def reflect_pad(images: Tensor, pad: int) -> Tensor:
    """Reflect-pad (B, C, H, W) by `pad` on every side, by index, as the CPU steps' ``F.pad(mode="reflect")``
    (which refuses a pad as wide as the image; here the mirror folds again)."""
    height, width = images.shape[-2:]
    device = images.device
    rows = reflect_index(torch.arange(-pad, height + pad, device=device), height)
    cols = reflect_index(torch.arange(-pad, width + pad, device=device), width)
    return images.index_select(-2, rows).index_select(-1, cols)


def _grouped(images: Tensor, kernels: Tensor) -> tuple[Tensor, Tensor]:
    """The batch as one image of B*C channels and each sample's kernel repeated for its C channels, for a
    convolution with groups = B*C (one kernel per sample, one call for the batch)."""
    batch, channels = images.shape[:2]
    return images.reshape(1, batch * channels, *images.shape[-2:]), kernels.repeat_interleave(channels, dim=0)


# -- kernels ------------------------------------------------------------------------------------------------


def gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """Per-sample 1-D Gaussian kernels (B, 2*radius+1), float32: torchvision's ``exp(-(x/σ)²)`` at
    ``x = d/√2`` normalised by a softmax, each zero outside its own ±ceil(3σ) support (the CPU kernel size)."""
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    x = offsets / math.sqrt(2.0)
    logits = (x / sigma.float()[:, None]).pow(2).neg()
    own_radius = torch.ceil(3 * sigma)[:, None]
    logits = logits.masked_fill(offsets.abs() > own_radius, -math.inf)
    return torch.softmax(logits, dim=-1)


def gaussian_blur_batch(images: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """Blur each image with its own σ: reflect-pad once by the largest radius, then two separable grouped
    convolutions. The extra padding meets only the zero weights, so each sample equals torchvision's
    ``gaussian_blur`` with its own kernel size."""
    batch, channels, height, width = images.shape
    kernels = gaussian_kernels(sigma, radius)
    padded, weight = _grouped(reflect_pad(images, radius), kernels)
    size = weight.shape[-1]
    out = F.conv2d(padded, weight.view(-1, 1, 1, size), groups=batch * channels)
    out = F.conv2d(out, weight.view(-1, 1, size, 1), groups=batch * channels)
    return out.view(batch, channels, height, width)


def motion_size(length: float) -> int:
    """`motion_kernel`'s kernel side for a line of `length` pixels."""
    return 2 * math.ceil(length / 2) + 1


def motion_kernels(length: Tensor, angle: Tensor, size: int) -> Tensor:
    """Per-sample line kernels (B, size, size), float32: `motion_kernel` vectorised, each sample's kernel
    centred in the common `size`.

    The points along the line follow ``torch.linspace``'s per-element formula in float32 (the CPU may round
    the middle points 1 ulp differently; measured to change no kernel), are rounded to pixels, scattered into
    the kernel (a sample's points beyond its own count repeat its first point) and normalised."""
    device = length.device
    own_size = 2 * torch.ceil(length / 2) + 1  # float64, exact integers
    centre = torch.div(own_size, 2, rounding_mode="floor").float()[:, None]
    steps = (4 * own_size).clamp(min=2).float()[:, None]
    index = torch.arange(max(2, 4 * size), device=device, dtype=torch.float32)
    end = ((length - 1) / 2).float()[:, None]
    start = -end
    step = (end - start) / (steps - 1)
    t = torch.where(
        index < torch.div(steps, 2, rounding_mode="floor"), start + step * index, end - step * (steps - 1 - index)
    )
    radians = angle * (math.pi / 180.0)  # math.radians
    cos, sin = torch.cos(radians).float()[:, None], torch.sin(radians).float()[:, None]
    offset = size // 2 - centre.long()
    xs = (t * cos + centre).round().long() + offset
    ys = (centre - t * sin).round().long() + offset
    flat = ys * size + xs
    flat = torch.where(index < steps, flat, flat[:, :1])
    kernels = torch.zeros(length.shape[0], size * size, device=device).scatter_(1, flat, 1.0)
    return (kernels / kernels.sum(-1, keepdim=True)).view(-1, size, size)


def motion_blur_batch(images: Tensor, kernels: Tensor) -> Tensor:
    """Convolve each image with its own (K, K) kernel, reflect-padded: one grouped convolution."""
    batch, channels, height, width = images.shape
    padded, weight = _grouped(reflect_pad(images, kernels.shape[-1] // 2), kernels)
    out = F.conv2d(padded, weight[:, None], groups=batch * channels)
    return out.view(batch, channels, height, width)


# -- masks --------------------------------------------------------------------------------------------------


def box_pixels(params: Params, height: int, width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Box heights, widths, tops and lefts in pixels (B, N): sides ``max(1, round(fraction × side))`` and
    positions uniform over the places the box fits, as `BoxMask`."""
    box_h = torch.round(params["height"] * height).clamp(min=1)
    box_w = torch.round(params["width"] * width).clamp(min=1)
    top = torch.floor(params["top"] * (height - box_h + 1))
    left = torch.floor(params["left"] * (width - box_w + 1))
    return box_h.long(), box_w.long(), top.long(), left.long()


def box_masks(params: Params, height: int, width: int) -> Tensor:
    """The union of each sample's first ``count`` boxes as a (B, 1, H, W) float mask, by comparing pixel
    coordinates with every box's edges at once."""
    box_h, box_w, top, left = box_pixels(params, height, width)
    device = top.device
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    in_rows = (rows >= top[..., None]) & (rows < (top + box_h)[..., None])  # (B, N, H)
    in_cols = (cols >= left[..., None]) & (cols < (left + box_w)[..., None])  # (B, N, W)
    active = torch.arange(top.shape[1], device=device) < params["count"][:, None]  # (B, N)
    inside = in_rows[..., :, None] & in_cols[..., None, :] & active[..., None, None]
    return inside.any(dim=1, keepdim=True).float()


def brush_points(params: Params, height: int, width: int) -> Tensor:
    """Every stroke's random-walk vertices (B, S, V+1, 2) as (x, y) pixels in float64: start anywhere, then
    steps of a random angle and a length of 10–30% of the short side, clamped to the image, as `BrushMask`."""
    side = min(height, width)
    x, y = params["x"] * width, params["y"] * height
    points = [torch.stack([x, y], dim=-1)]
    for vertex in range(params["angle"].shape[-1]):
        angle, step = params["angle"][..., vertex], params["step"][..., vertex] * side
        x = (x + step * torch.cos(angle)).clamp(0, width - 1)
        y = (y + step * torch.sin(angle)).clamp(0, height - 1)
        points.append(torch.stack([x, y], dim=-1))
    return torch.stack(points, dim=2)


def stroke_widths(params: Params, height: int, width: int) -> Tensor:
    """Brush widths in pixels (B, S): ``max(1, round(fraction × short side))``."""
    return torch.round(params["width"] * min(height, width)).clamp(min=1)


def _segment_distance2(start: Tensor, end: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Squared distances (B, V, H, W) from pixel centres to segments (B, V, 2) (a point when degenerate)."""
    ax, ay = start[..., 0, None, None], start[..., 1, None, None]
    dx, dy = (end - start)[..., 0, None, None], (end - start)[..., 1, None, None]
    px, py = xs - ax, ys - ay  # (B, V, 1, W), (B, V, H, 1)
    along = ((px * dx + py * dy) / (dx * dx + dy * dy).clamp(min=1e-12)).clamp(0, 1)
    return (px - along * dx).pow(2) + (py - along * dy).pow(2)


def _round_half_up(values: Tensor) -> Tensor:
    """PIL's ROUND_UP: to the nearest integer, halves away from zero."""
    return torch.sign(values) * torch.floor(values.abs() + 0.5)


def _round_half_down(values: Tensor) -> Tensor:
    """PIL's ROUND_DOWN: to the nearest integer, halves towards zero."""
    return torch.sign(values) * torch.ceil(values.abs() - 0.5)


def wide_lines(start: Tensor, end: Tensor, width: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """PIL's wide line (``ImagingDrawWideLine``) for segments (B, V, 2) of pens `width` (B,), as (B, V, H, W)
    coverage: the quad spanned by the segment between its ends truncated to integers, offset to either side
    by PIL's integer approximations of half the pen, filled like PIL's scanline filler (rows within the quad;
    a pixel is in when its horizontal extent overlaps the quad's span on its row). A one-pixel pen, or a
    segment whose ends truncate to one pixel, is a thin line: the pixels within half a pixel of it."""
    a, b = start.trunc(), end.trunc()
    dx, dy = (b - a).unbind(-1)  # (B, V)
    length = torch.hypot(dx, dy).clamp(min=1e-12)
    half = (width[:, None] - 1) / 2
    ratio_max, ratio_min = _round_half_up(half) / length, _round_half_down(half) / length
    dx_min, dx_max = _round_half_down(ratio_min * dy), _round_half_down(ratio_max * dy)
    dy_min, dy_max = _round_half_down(ratio_min * dx), _round_half_down(ratio_max * dx)
    side_a, side_b = torch.stack([-dx_min, dy_max], dim=-1), torch.stack([dx_max, -dy_min], dim=-1)
    corners = torch.stack([a + side_a, b + side_a, b + side_b, a + side_b], dim=2).float()  # (B, V, 4, 2)
    across = side_b - side_a
    orientation = torch.sign(dx * across[..., 1] - dy * across[..., 0]).float()[..., None, None]
    rows = corners[..., 1]
    inside = (ys >= rows.amin(dim=2)[..., None, None]) & (ys <= rows.amax(dim=2)[..., None, None])
    edges = corners.roll(-1, dims=2) - corners
    for k in range(4):
        ex, ey = edges[:, :, k, 0, None, None], edges[:, :, k, 1, None, None]
        cx, cy = corners[:, :, k, 0, None, None], corners[:, :, k, 1, None, None]
        # the edge's inner half-plane, widened by half a pixel horizontally (PIL rounds each span's ends)
        margin = orientation * (ex * (ys - cy) - ey * (xs - cx)) + 0.5 * ey.abs()
        inside = inside & ((margin > 0) | ((ey == 0) & (margin >= 0)))
    thin = (width[:, None] <= 1) | (orientation[..., 0, 0] == 0)
    near = _segment_distance2(a.float(), b.float(), xs, ys) <= 0.25
    return torch.where(thin[..., None, None], near, inside)


def ellipses(centres: Tensor, width: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """PIL's filled ellipses of bounding box ``centre ± width/2`` (truncated to integers, as PIL does) for
    centres (B, P, 2) and widths (B,), as (B, P, H, W) coverage: pixel centres inside the ellipse through the
    box's pixel centres, widened by 0.4 px (the value that matches PIL's rasteriser best, measured)."""
    radius = width[:, None, None] / 2
    low, high = (centres - radius).trunc(), (centres + radius).trunc()
    middle, semi_axes = ((low + high) / 2).float(), ((high - low) / 2 + 0.4).float()
    u = (xs - middle[..., 0, None, None]) / semi_axes[..., 0, None, None]
    v = (ys - middle[..., 1, None, None]) / semi_axes[..., 1, None, None]
    return u * u + v * v <= 1


def brush_masks(params: Params, height: int, width: int) -> Tensor:
    """Each sample's strokes as a (B, 1, H, W) float mask, rasterised like the CPU's PIL drawing: the wide
    line through every active segment (`wide_lines`) and a disc at every vertex (`ellipses`). Loops over the
    fixed maximum number of strokes, vectorised over samples and vertices. Pixel-identical to PIL on the
    preset's strokes (measured); for wide pens PIL's ellipse rasteriser and curved joints (pens over 4 px) are
    approximated (IoU ≥ 0.97, measured)."""
    points = brush_points(params, height, width)  # (B, S, V+1, 2), float64 so truncation matches PIL's
    widths = stroke_widths(params, height, width)  # (B, S)
    device = points.device
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None]
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, :]
    strokes, vertices = params["angle"].shape[1:]
    index = torch.arange(vertices + 1, device=device)
    covered = torch.zeros(points.shape[0], height, width, dtype=torch.bool, device=device)
    for stroke in range(strokes):
        walk, pen = points[:, stroke], widths[:, stroke]
        drawn = (index <= params["vertices"][:, stroke, None]) & (stroke < params["strokes"])[:, None]  # (B, V+1)
        lines = wide_lines(walk[:, :-1], walk[:, 1:], pen, xs, ys) & drawn[:, 1:, None, None]
        discs = ellipses(walk, pen, xs, ys) & drawn[..., None, None]
        covered |= lines.any(dim=1) | discs.any(dim=1)
    return covered[:, None].float()


# -- JPEG ---------------------------------------------------------------------------------------------------


@functools.cache
def device_jpeg_works(device: torch.device) -> bool:
    """Whether torchvision can encode and decode JPEG on this (CUDA) device: nvJPEG encoding needs a recent
    torchvision built with it, so it is probed once per device rather than assumed from version numbers."""
    if device.type != "cuda":
        return False
    try:
        probe = torch.zeros(3, 16, 16, dtype=torch.uint8, device=device)
        decoded = decode_jpeg_on_device(bytes_to_host(encode_jpeg_on_device([probe], quality=90)), device)
        return decoded[0].shape == probe.shape and decoded[0].device == probe.device
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        return False


def jpeg_batch(images: Tensor, quality: Tensor) -> Tensor:
    """Compress each image at its own integer quality and decode it (float in [0, 1]).

    Not vectorised and not sync-free, by necessity: the codec takes a Python quality and produces bytes.
    On a GPU where `device_jpeg_works`, images of equal quality are encoded together with nvJPEG, all their
    bytes (small) copied to the host at once, where torchvision's decoder wants them, and all decoded in one
    call on the device (`device_jpeg`, which keeps the codec off memory the stream still uses): two host syncs
    per batch (the qualities, the bytes), not one per image. nvJPEG's codec, not libjpeg, so values may differ
    slightly from the CPU step's. Elsewhere each image goes through libjpeg on the CPU, exactly as the CPU
    `JPEG` step.
    """
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    qualities = quality.tolist()  # host sync: the encoder's quality is a Python int
    if device_jpeg_works(images.device):
        encoded: list[Tensor] = [torch.empty(0)] * len(qualities)
        for value in sorted(set(qualities)):
            chosen = [i for i, q in enumerate(qualities) if q == value]
            for i, data in zip(chosen, encode_jpeg_on_device([pixels[i] for i in chosen], quality=value)):
                encoded[i] = data
        decoded = torch.stack(decode_jpeg_on_device(bytes_to_host(encoded), images.device))
    else:
        host = pixels.cpu()
        decoded = torch.stack([decode_jpeg(encode_jpeg(p, quality=q)) for p, q in zip(host, qualities)])
    return decoded.to(images.device).float() / 255


# -- steps --------------------------------------------------------------------------------------------------


class BatchStep(abc.ABC):
    """One degradation for a batch: `sample_params` draws every sample's strength (inspectable tensors),
    `apply` degrades float images (B, C, H, W) in [0, 1] and masks (B, 1, H, W) with them."""

    scale: int = 1
    uses_mask: bool = False

    @abc.abstractmethod
    def sample_params(self, batch_size: int, device: torch.device, generator: Generator | None = None) -> Params:
        """Per-sample parameters, drawn on `device`."""

    @abc.abstractmethod
    def apply(self, images: Tensor, masks: Tensor, params: Params, generator: Generator | None = None) -> Pair:
        """The degraded images and updated masks; `generator` feeds the noise steps' per-pixel draws."""

    def __call__(self, images: Tensor, masks: Tensor, generator: Generator | None = None) -> Pair:
        params = self.sample_params(images.shape[0], images.device, generator)
        return self.apply(images, masks, params, generator)


@dataclasses.dataclass(frozen=True)
class GaussianNoiseBatch(BatchStep):
    """`GaussianNoise`: additive white noise, σ per sample in 0–255 units, not clipped."""

    sigma: Range

    def sample_params(self, batch_size: int, device: torch.device, generator: Generator | None = None) -> Params:
        return {"sigma": uniform(self.sigma, (batch_size,), device, generator)}

    def apply(self, images: Tensor, masks: Tensor, params: Params, generator: Generator | None = None) -> Pair:
        noise = torch.randn(images.shape, device=images.device, dtype=images.dtype, generator=generator)
        return images + _per_sample(params["sigma"] / 255.0) * noise, masks


@dataclasses.dataclass(frozen=True)
class PoissonNoiseBatch(BatchStep):
    """`PoissonNoise`: shot noise with `peak` photons at white, per sample."""

    peak: Range

    def sample_params(self, batch_size: int, device: torch.device, generator: Generator | None = None) -> Params:
        return {"peak": uniform(self.peak, (batch_size,), device, generator)}

    def apply(self, images: Tensor, masks: Tensor, params: Params, generator: Generator | None = None) -> Pair:
        peak = _per_sample(params["peak"])
        return torch.poisson(images.clamp(min=0) * peak, generator=generator) / peak, masks


@dataclasses.dataclass(frozen=True)
class GaussianBlurBatch(BatchStep):
    """`GaussianBlur`: isotropic blur, σ pixels per sample, kernel ±ceil(3σ), reflect padding."""

    sigma: Range

    @property
    def radius(self) -> int:
        """The largest kernel radius the range allows: the common size every sample's kernel is padded to."""
        return math.ceil(3 * self.sigma[1])

    def sample_params(self, batch_size: int, device: torch.device, generator: Generator | None = None) -> Params:
        return {"sigma": uniform(self.sigma, (batch_size,), device, generator)}

    def apply(self, images: Tensor, masks: Tensor, params: Params, generator: Generator | None = None) -> Pair:
        return gaussian_blur_batch(images, params["sigma"], self.radius), masks


@dataclasses.dataclass(frozen=True)
class MotionBlurBatch(BatchStep):
    """`MotionBlur`: a line kernel of its own length and angle (degrees) per sample, reflect padding."""

    length: Range
    angle: Range

    @property
    def size(self) -> int:
        """The largest kernel side the length range allows."""
        return motion_size(self.length[1])

    def sample_params(self, batch_size: int, device: torch.device, generator: Generator | None = None) -> Params:
        length = uniform(self.length, (batch_size,), device, generator)
        return {"length": length, "angle": uniform(self.angle, (batch_size,), device, generator)}

    def apply(self, images: Tensor, masks: Tensor, params: Params, generator: Generator | None = None) -> Pair:
        return motion_blur_batch(images, motion_kernels(params["length"], params["angle"], self.size)), masks


@dataclasses.dataclass(frozen=True)
class DownscaleBatch(BatchStep):
    """`Downscale`: antialiased bicubic down-scaling by the step's factor (the same for the batch); the mask
    follows by nearest neighbour."""

    scale: int = 2

    def sample_params(self, batch_size: int, device: torch.device, generator: Generator | None = None) -> Params:
        return {}

    def apply(self, images: Tensor, masks: Tensor, params: Params, generator: Generator | None = None) -> Pair:
        height, width = images.shape[-2:]
        if height % self.scale or width % self.scale:
            raise UserError(
                f"a {height}x{width} patch cannot be down-scaled x{self.scale}. Use a patch size divisible by it"
            )
        size = (height // self.scale, width // self.scale)
        low = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
        return low, F.interpolate(masks, size=size, mode="nearest")


@dataclasses.dataclass(frozen=True)
class JPEGBatch(BatchStep):
    """`JPEG`: compression at an integer quality per sample (see `jpeg_batch`: the one step that is neither
    vectorised nor free of host syncs)."""

    quality: Range

    def sample_params(self, batch_size: int, device: torch.device, generator: Generator | None = None) -> Params:
        return {"quality": torch.round(uniform(self.quality, (batch_size,), device, generator)).long()}

    def apply(self, images: Tensor, masks: Tensor, params: Params, generator: Generator | None = None) -> Pair:
        return jpeg_batch(images, params["quality"]), masks


@dataclasses.dataclass(frozen=True)
class BoxMaskBatch(BatchStep):
    """`BoxMask`: per sample ``round(count)`` boxes, each side its own fraction of the image side, zeroed.

    Parameters are resolution-free (fractions and uniform positions in [0, 1)) so they apply at the size the
    step meets; `box_pixels` turns them into pixels. Up to the range's largest count are drawn, masked per
    sample by its own count."""

    count: Range
    size: Range
    uses_mask: bool = dataclasses.field(default=True, init=False)

    def sample_params(self, batch_size: int, device: torch.device, generator: Generator | None = None) -> Params:
        boxes = (batch_size, round(self.count[1]))
        return {
            "count": torch.round(uniform(self.count, (batch_size,), device, generator)).long(),
            "height": uniform(self.size, boxes, device, generator),
            "width": uniform(self.size, boxes, device, generator),
            "top": torch.rand(boxes, device=device, generator=generator).double(),
            "left": torch.rand(boxes, device=device, generator=generator).double(),
        }

    def apply(self, images: Tensor, masks: Tensor, params: Params, generator: Generator | None = None) -> Pair:
        masks = torch.maximum(masks, box_masks(params, *images.shape[-2:]))
        return images * (1 - masks), masks


@dataclasses.dataclass(frozen=True)
class BrushMaskBatch(BatchStep):
    """`BrushMask`: per sample ``round(strokes)`` random-walk strokes of ``round(vertices)`` steps each, with
    their own widths, zeroed. Parameters are resolution-free (`brush_points` and `stroke_widths` turn them
    into pixels): start fractions, step angles in radians and step lengths as fractions of the short side."""

    strokes: Range
    vertices: Range
    width: Range
    uses_mask: bool = dataclasses.field(default=True, init=False)

    def sample_params(self, batch_size: int, device: torch.device, generator: Generator | None = None) -> Params:
        strokes = (batch_size, round(self.strokes[1]))
        steps = (*strokes, round(self.vertices[1]))

        def rand(shape: tuple[int, ...]) -> Tensor:
            return torch.rand(shape, device=device, generator=generator).double()

        return {
            "strokes": torch.round(uniform(self.strokes, (batch_size,), device, generator)).long(),
            "width": uniform(self.width, strokes, device, generator),
            "x": rand(strokes),
            "y": rand(strokes),
            "vertices": torch.round(uniform(self.vertices, strokes, device, generator)).long(),
            "angle": rand(steps) * 2 * math.pi,
            "step": 0.1 + 0.2 * rand(steps),
        }

    def apply(self, images: Tensor, masks: Tensor, params: Params, generator: Generator | None = None) -> Pair:
        masks = torch.maximum(masks, brush_masks(params, *images.shape[-2:]))
        return images * (1 - masks), masks


# Exact types: a subclass may degrade differently, so it is refused rather than silently approximated.
_BUILDERS: dict[type, Callable[[Any], BatchStep]] = {
    cpu.GaussianNoise: lambda s: GaussianNoiseBatch(strength_range(s.sigma)),
    cpu.PoissonNoise: lambda s: PoissonNoiseBatch(strength_range(s.peak)),
    cpu.GaussianBlur: lambda s: GaussianBlurBatch(strength_range(s.sigma)),
    cpu.MotionBlur: lambda s: MotionBlurBatch(strength_range(s.length), strength_range(s.angle)),
    cpu.Downscale: lambda s: DownscaleBatch(int(s.scale)),
    cpu.JPEG: lambda s: JPEGBatch(strength_range(s.quality)),
    cpu.BoxMask: lambda s: BoxMaskBatch(strength_range(s.count), strength_range(s.size)),
    cpu.BrushMask: lambda s: BrushMaskBatch(
        strength_range(s.strokes), strength_range(s.vertices), strength_range(s.width)
    ),
}


def batch_step(step: cpu.Step) -> BatchStep:
    """The batched counterpart of one CPU step, with the step's own settings."""
    builder = _BUILDERS.get(type(step))
    if builder is None:
        raise UserError(
            f"degradation {type(step).__name__} has no device version (supported: "
            f"{', '.join(cls.__name__ for cls in _BUILDERS)}). Set data.on_gpu=false to degrade on the CPU"
        )
    return builder(step)


class DeviceDegrade:
    """A `Degrade` chain for uint8 batches on their device: steps in config order, each sample with its own
    random strengths; output stored like the CPU path's (clamped, rounded to uint8; mask > 0.5)."""

    def __init__(self, steps: Sequence[BatchStep] = ()) -> None:
        self.steps = list(steps)
        self.scale = math.prod(step.scale for step in self.steps)
        self.uses_mask = any(step.uses_mask for step in self.steps)

    @classmethod
    def from_degrade(cls, degrade: cpu.Degrade) -> DeviceDegrade:
        """Translate a CPU `Degrade`, reading every setting from its step objects."""
        return cls([batch_step(step) for step in degrade.steps])

    def __call__(self, clean: Tensor, generator: Generator | None = None) -> Pair:
        """uint8 clean batch (B, C, H, W) → (degraded uint8 (B, C, H/s, W/s), mask uint8 (B, 1, H/s, W/s)),
        on the batch's device."""
        if clean.ndim != 4:
            raise UserError(f"DeviceDegrade takes a (B, C, H, W) batch, got shape {tuple(clean.shape)}")
        images = clean.float() / 255
        masks = torch.zeros(clean.shape[0], 1, *clean.shape[-2:], device=clean.device)
        for step in self.steps:
            images, masks = step(images, masks, generator)
        degraded = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        return degraded, (masks > 0.5).to(torch.uint8)

    def __repr__(self) -> str:
        return f"DeviceDegrade({self.steps})"
