"""The built-in augmentation presets as vectorised, per-sample operations on a uint8 batch on the device.

`device_augment_from` reads a torchvision-v2 preset (the objects Hydra builds from ``conf/data/augment``)
and returns a `DeviceAugment`: one step per torchvision transform, each drawing its own random parameters
per sample and applying them to the whole batch at once. Every step takes its settings from the
torchvision object (``p``, ``degrees``, jitter ranges, the RandAugment op space …), never from the preset
files, and draws from the same distribution as the CPU transform applied image by image.

The kernels follow torchvision's tensor implementations operation for operation (same formulas, same
float32 rounding, same uint8 truncation), so for fixed parameters they return what torchvision returns;
the tests measure it. Nothing here synchronises with the host: no ``.item()``, no boolean-mask indexing,
no Python loop over samples. Per-sample choices (which op, which order) are made by computing every
candidate for the whole batch and selecting with ``torch.where`` — cheap at in-memory image sizes.

Libraries: torchvision.transforms.v2 draws one set of parameters per call (a whole batch flips or not), and
kornia.augmentation, which draws per sample, defines the ops differently (same factors, measured: contrast up to
66/255 apart, saturation 72/255, a 10° rotation 174/255), so a config would train on other images on a GPU than on a
CPU; these give torchvision's pixels for the same parameters (tests/data/test_device_augment.py).
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
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from transferlab.utils.errors import UserError

Params = dict[str, torch.Tensor]
Fill = tuple[float, ...] | None

_DEG_TO_RAD = math.pi / 180.0  # what math.radians multiplies by
_RAD_TO_DEG = 180.0 / math.pi  # what math.degrees multiplies by


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """A (B,) vector shaped to broadcast over (B, C, H, W)."""
    return values.reshape(-1, 1, 1, 1)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Clamp and truncate to uint8, as torchvision's colour ops do (no rounding)."""
    return images.clamp_(0, 255).to(torch.uint8)


def _channel_values(values: tuple[float, ...], channels: int, device: torch.device) -> torch.Tensor:
    """Per-channel constants as (1, C, 1, 1) float32, built on the device (no host→device copy per batch)."""
    if len(values) == 1:
        return torch.full((1, channels, 1, 1), values[0], device=device)
    return torch.stack([torch.full((), value, device=device) for value in values]).view(1, -1, 1, 1)


# -- geometry -----------------------------------------------------------------------------------------------


def _float64(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    return value.double() if isinstance(value, torch.Tensor) else torch.full_like(like, value)


def inverse_affine_matrix(
    angle: torch.Tensor,
    translate: tuple[torch.Tensor | float, torch.Tensor | float] = (0.0, 0.0),
    shear: tuple[torch.Tensor | float, torch.Tensor | float] = (0.0, 0.0),
    center: tuple[torch.Tensor | float, torch.Tensor | float] = (0.0, 0.0),
) -> torch.Tensor:
    """Per-sample inverse affine matrices (B, 2, 3) in float64, scale 1, degrees in, center relative to the
    image centre. Same operations in the same order as torchvision's `_get_inverse_affine_matrix`, so the
    float32 grids built from it match torchvision's bit for bit."""
    angle = angle.double()
    tx, ty = (_float64(v, angle) for v in translate)
    shear_x, shear_y = (_float64(v, angle) for v in shear)
    cx, cy = (_float64(v, angle) for v in center)
    rot, sx, sy = angle * _DEG_TO_RAD, shear_x * _DEG_TO_RAD, shear_y * _DEG_TO_RAD
    cos_sy, tan_sx, rot_minus_sy = torch.cos(sy), torch.tan(sx), rot - sy
    cx_plus_tx, cy_plus_ty = cx + tx, cy + ty
    a = torch.cos(rot_minus_sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot_minus_sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * cx_plus_tx - m1 * cy_plus_ty
    m5 = cy - m3 * cx_plus_tx - m4 * cy_plus_ty
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=-1).view(-1, 2, 3)


def affine_grid_for(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sampling grid (B, H, W, 2) for float32 inverse matrices ``theta`` (B, 2, 3) in pixel units about the
    image centre: torchvision's `_affine_grid` (normalise after applying theta, align_corners=False) batched."""
    batch, device = theta.shape[0], theta.device
    base = torch.empty(1, height, width, 3, dtype=theta.dtype, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device))
    rows = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device)
    base[..., 1].copy_(rows.unsqueeze_(-1))
    base[..., 2].fill_(1)
    rescaled = theta.transpose(1, 2).clone()
    rescaled[..., 0] /= 0.5 * width
    rescaled[..., 1] /= 0.5 * height
    grid = base.view(1, height * width, 3).expand(batch, -1, -1).bmm(rescaled)
    return grid.view(batch, height, width, 2)


def grid_sample_batch(
    images: torch.Tensor, grid: torch.Tensor, mode: str = "nearest", fill: Fill = None
) -> torch.Tensor:
    """Resample uint8 images along a per-sample grid, filling outside pixels like torchvision's
    `_apply_grid_transform` (a ones channel marks the inside when there is a fill), rounding back to uint8."""
    channels = images.shape[1]
    samples = images.float()
    masked = fill is not None and (mode != "nearest" or any(fill))  # nearest + zero fill == zero padding
    if masked:
        samples = torch.cat([samples, torch.ones_like(samples[:, :1])], dim=1)
    samples = F.grid_sample(samples, grid, mode=mode, padding_mode="zeros", align_corners=False)
    if masked:
        samples, mask = samples[:, :channels], samples[:, channels:].expand(-1, channels, -1, -1)
        fill_values = _channel_values(fill, channels, images.device).expand_as(samples)  # type: ignore[arg-type]
        if mode == "nearest":
            samples = torch.where(mask < 0.5, fill_values, samples)
        else:
            samples = (samples - fill_values).mul_(mask).add_(fill_values)
    return samples.round_().to(torch.uint8)


def affine_batch(
    images: torch.Tensor, matrices: torch.Tensor, mode: str = "nearest", fill: Fill = None
) -> torch.Tensor:
    """Apply per-sample inverse affine matrices (B, 2, 3) from `inverse_affine_matrix` in one grid_sample."""
    height, width = images.shape[-2:]
    return grid_sample_batch(images, affine_grid_for(matrices.float(), height, width), mode, fill)


def rotate_batch(
    images: torch.Tensor,
    angles: torch.Tensor,
    mode: str = "nearest",
    fill: Fill = None,
    center: Sequence[float] | None = None,
) -> torch.Tensor:
    """Rotate each image counter-clockwise by its angle in degrees: torchvision's ``rotate`` (expand=False)."""
    height, width = images.shape[-2:]
    center_f = (0.0, 0.0) if center is None else (center[0] - 0.5 * width, center[1] - 0.5 * height)
    angles = angles.double().remainder(360.0)  # as rotate does: the matrix is built from angle % 360
    return affine_batch(images, inverse_affine_matrix(-angles, center=center_f), mode, fill)


def crop_padded_batch(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    size: tuple[int, int],
    padding: tuple[int, int, int, int],
    padding_mode: str = "constant",
    fill: tuple[float, ...] = (0.0,),
) -> torch.Tensor:
    """Crop each image at (top, left) of its padded version (padding = left, right, top, bottom), computed as
    index arithmetic into the unpadded image: no padded copy is made."""
    batch, channels, height, width = images.shape
    device = images.device
    rows = top[:, None] + torch.arange(size[0], device=device) - padding[2]
    cols = left[:, None] + torch.arange(size[1], device=device) - padding[0]
    out = images[
        torch.arange(batch, device=device)[:, None, None, None],
        torch.arange(channels, device=device)[None, :, None, None],
        _padded_source(rows, height, padding_mode)[:, None, :, None],
        _padded_source(cols, width, padding_mode)[:, None, None, :],
    ]
    if padding_mode == "constant" and any(padding):  # pixels that fell in the padding take the fill
        inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        if any(fill):
            fill_values = _channel_values(fill, channels, device).to(images.dtype)
            return torch.where(inside[:, None], out, fill_values)
        out = out * inside[:, None].to(out.dtype)
    return out


def _padded_source(index: torch.Tensor, size: int, padding_mode: str) -> torch.Tensor:
    """Where a padded coordinate reads from, for reflect / symmetric / edge / constant padding."""
    if padding_mode == "reflect":  # mirror without repeating the edge pixel
        index = index.abs()
        return torch.where(index > size - 1, 2 * (size - 1) - index, index)
    if padding_mode == "symmetric":  # mirror repeating the edge pixel
        index = torch.where(index < 0, -index - 1, index)
        return torch.where(index > size - 1, 2 * size - 1 - index, index)
    return index.clamp(0, size - 1)  # edge; constant is masked afterwards


def _resize_taps(
    start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, antialias: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices and weights (B, out, K) resizing the window [start, start+length) to out_size, computed
    in float32 with PyTorch's formulas for float images: the antialiased bilinear filter (a triangle widened by
    the downscale factor, taps limited to the window and renormalised) or plain bilinear (two taps, source
    coordinate clamped to the window)."""
    device = start.device
    scale = length.float()[:, None] / out_size  # (B, 1)
    position = torch.arange(out_size, device=device, dtype=torch.float32) + 0.5
    if not antialias:
        source = (scale * position - 0.5).clamp(min=0)  # (B, out)
        first = torch.minimum(source.floor(), length[:, None] - 1.0)
        lambda_ = (source - first).clamp(0, 1)
        second = torch.minimum(first + 1, length[:, None] - 1.0)
        index = start[:, None, None] + torch.stack([first, second], dim=-1).long()
        return index, torch.stack([1 - lambda_, lambda_], dim=-1)
    support = scale.clamp(min=1.0)
    taps = 2 * math.ceil(max(in_size / out_size, 1.0)) + 1
    center = scale * position  # (B, out)
    first = (center - support + 0.5).floor().clamp(min=0)
    end = torch.minimum((center + support + 0.5).floor(), length.float()[:, None])
    source = first[..., None] + torch.arange(taps, device=device, dtype=torch.float32)  # (B, out, K)
    weight = (1.0 - ((source - center[..., None] + 0.5) * (1.0 / support[..., None])).abs()).clamp(min=0)
    weight = weight * (source < end[..., None])
    weight = weight / weight.sum(-1, keepdim=True)
    index = (start[:, None, None] + source.long()).clamp(max=in_size - 1)
    return index, weight


def _weighted_taps(samples: torch.Tensor, weights: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of taps times weights along `dim`, accumulated tap by tap as PyTorch's resampling loops do."""
    samples, weights = samples.unbind(dim), weights.unbind(dim)
    out = samples[0] * weights[0]
    for sample, weight in zip(samples[1:], weights[1:]):
        out = torch.addcmul(out, sample, weight)
    return out


def resized_crop_batch(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    size: tuple[int, int],
    antialias: bool = True,
) -> torch.Tensor:
    """Crop each image to its own box and resize it to `size` with (antialiased) bilinear filtering:
    torchvision's ``resized_crop`` per sample, done as two separable gathers over per-sample filter taps
    (horizontal first, as PyTorch does), rounded back to uint8."""
    batch, channels, in_height, in_width = images.shape
    rows, row_weights = _resize_taps(top, height, in_height, size[0], antialias)
    cols, col_weights = _resize_taps(left, width, in_width, size[1], antialias)
    samples = images.float()
    taps = cols.shape[-1]
    index = cols.view(batch, 1, 1, -1).expand(batch, channels, in_height, -1)
    samples = samples.gather(3, index).view(batch, channels, in_height, size[1], taps)
    samples = _weighted_taps(samples, col_weights.view(batch, 1, 1, size[1], taps), -1)
    taps = rows.shape[-1]
    index = rows.view(batch, 1, -1, 1).expand(batch, channels, -1, size[1])
    samples = samples.gather(2, index).view(batch, channels, size[0], taps, size[1])
    samples = _weighted_taps(samples, row_weights.view(batch, 1, size[0], taps, 1), -2)
    return samples.round_().clamp_(0, 255).to(torch.uint8)


# -- colour -------------------------------------------------------------------------------------------------


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """Floored luma (B, 1, H, W) float32, with torchvision's exact op sequence (rgb_to_grayscale + floor)."""
    if images.shape[1] == 1:
        return images.float()
    r, g, b = images.unbind(dim=1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1).floor_()


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's `_blend` with a per-sample ratio: ``x * r + other * (1 - r)``, the second term fused into
    the add (addcmul, like torchvision's ``add_(alpha=)``), clamped and truncated to uint8."""
    ratio = _per_sample(ratio.double())
    out = images.float() * ratio.float()
    return _to_uint8(torch.addcmul(out, other, (1.0 - ratio).float()))


def adjust_brightness_batch(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Multiply each image by its factor (torchvision's ``adjust_brightness``)."""
    return _to_uint8(images.float() * _per_sample(factors.double()).float())


def adjust_contrast_batch(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend each image with the mean of its grayscale version (torchvision's ``adjust_contrast``)."""
    mean = _grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, factors)


def adjust_saturation_batch(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend each image with its grayscale version (torchvision's ``adjust_saturation``)."""
    if images.shape[1] == 1:
        return images
    return _blend(images, _grayscale(images), factors)


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """torchvision's float RGB→HSV, step for step (it is already batch-agnostic)."""
    r, g, _ = image.unbind(dim=-3)
    minc, maxc = torch.aminmax(image, dim=-3)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    channels_range_divisor = torch.where(eqc, ones, channels_range).unsqueeze_(dim=-3)
    rc, gc, bc = ((maxc.unsqueeze(dim=-3) - image) / channels_range_divisor).unbind(dim=-3)
    mask_maxc_neq_r = maxc != r
    mask_maxc_eq_g = maxc == g
    hg = rc.add(2.0).sub_(bc).mul_(mask_maxc_eq_g & mask_maxc_neq_r)
    hr = bc.sub_(gc).mul_(~mask_maxc_neq_r)
    hb = gc.add_(4.0).sub_(rc).mul_(mask_maxc_neq_r.logical_and_(mask_maxc_eq_g.logical_not_()))
    h = hr.add_(hg).add_(hb)
    h = h.mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=-3)


@functools.cache
def _hsv_select(device: torch.device) -> torch.Tensor:
    """Which of (v, p, q, t) feeds r, g, b for each hue sector; copied to each device once."""
    return torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=device)


def _hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """torchvision's float HSV→RGB, step for step, for a (B, 3, H, W) batch."""
    h, s, v = image.unbind(dim=-3)
    h6 = h.mul(6)
    i = torch.floor(h6)
    f = h6.sub_(i)
    i = i.to(dtype=torch.int32)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = sxf.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    i.remainder_(6)
    vpqt = torch.stack((v, p, q, t), dim=-3)
    select = _hsv_select(image.device)[:, i].moveaxis(0, -3)
    return vpqt.gather(-3, select)


def adjust_hue_batch(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by its factor in [-0.5, 0.5] (torchvision's ``adjust_hue``, via HSV)."""
    if images.shape[1] == 1:
        return images
    hsv = _rgb_to_hsv(images.float().mul_(1.0 / 255))
    h, s, v = hsv.unbind(dim=-3)
    h = h.add(factors.float().view(-1, 1, 1)).remainder_(1.0)
    rgb = _hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    return rgb.mul_(255 + 1.0 - 1e-3).to(torch.uint8)  # torchvision's float→uint8 conversion


def adjust_sharpness_batch(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend each image's interior with its 3×3 smoothed version ([[1,1,1],[1,5,1],[1,1,1]]/13, rounded),
    borders kept (torchvision's ``adjust_sharpness``)."""
    channels, height, width = images.shape[1:]
    if height <= 2 or width <= 2:
        return images
    samples = images.float()
    kernel = torch.full((channels, 1, 3, 3), 1.0 / 13.0, device=images.device)
    kernel[:, :, 1, 1] = 5.0 / 13.0
    blurred = F.conv2d(samples, kernel, groups=channels).round_()
    interior = samples[..., 1:-1, 1:-1]
    alpha = (1.0 - _per_sample(factors.double())).float()
    out = samples.clone()
    out[..., 1:-1, 1:-1] = torch.addcmul(interior, blurred.sub_(interior), alpha)
    return _to_uint8(out)


def posterize_batch(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep each image's top `bits` bits (0–8) per pixel (torchvision's ``posterize`` on uint8)."""
    shift = 8 - bits.long().clamp(0, 8)
    mask = 256 - torch.bitwise_left_shift(torch.ones_like(shift), shift)  # 8 bits → 255, 0 bits → 0
    return images & _per_sample(mask.to(torch.uint8))


def solarize_batch(images: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Invert each image's pixels at or above its threshold (compared in float32, as torchvision does)."""
    return torch.where(images >= _per_sample(thresholds.double()).float(), images.bitwise_not(), images)


def autocontrast_batch(images: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image to the full range (torchvision's ``autocontrast``)."""
    samples = images.float()
    minimum = samples.amin(dim=(-2, -1), keepdim=True)
    maximum = samples.amax(dim=(-2, -1), keepdim=True)
    flat = maximum == minimum
    inv_scale = torch.where(flat, 1.0, (maximum - minimum).mul_(1.0 / 255))
    minimum = torch.where(flat, 0.0, minimum)
    return _to_uint8(samples.sub_(minimum).div_(inv_scale))


def equalize_batch(images: torch.Tensor) -> torch.Tensor:
    """Histogram-equalise each channel of each image with PIL's lookup table, exactly as torchvision's
    ``equalize`` on uint8: one batched histogram (scatter_add), cumulative sums and a gathered LUT."""
    flat = images.flatten(start_dim=-2).long()  # (B, C, H*W)
    hist = flat.new_zeros(images.shape[:-2] + (256,), dtype=torch.int32)
    hist.scatter_add_(dim=-1, index=flat, src=hist.new_ones(1).expand_as(flat))
    cum_hist = hist.cumsum(dim=-1)
    last_value = cum_hist.argmax(dim=-1, keepdim=True)  # the first bin reaching the total: the image's maximum
    step = (flat.shape[-1] - hist.gather(dim=-1, index=last_value)).div(255, rounding_mode="floor")
    lut = (cum_hist[..., :-1] + step // 2).div(step.clamp(min=1), rounding_mode="floor").clamp(0, 255)
    lut = torch.cat([torch.zeros_like(lut[..., :1]), lut], dim=-1).to(torch.uint8)
    equalized = lut.gather(dim=-1, index=flat).view_as(images)
    return torch.where(step.ne(0).unsqueeze(-1), equalized, images)  # a near-constant channel stays as is


# -- steps --------------------------------------------------------------------------------------------------


def _interpolation(value: Any, allowed: tuple[str, ...], what: str) -> str:
    mode = value.value if isinstance(value, InterpolationMode) else str(value).lower()
    if mode not in allowed:
        raise UserError(
            f"augmentation {what} with interpolation={mode} has no device-resident version (only "
            f"{'/'.join(allowed)}). Set data.on_gpu=false to run it on the CPU"
        )
    return mode


def _fill(value: Any) -> Fill:
    """A transform's ``fill`` as a tuple of floats (None: no fill), resolved for plain image tensors."""
    if isinstance(value, dict):
        value = value.get(torch.Tensor, value.get("others"))
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return (float(value),)
    return tuple(float(v) for v in value)


class DeviceStep(abc.ABC):
    """One augmentation: draws per-sample parameters (inspectable tensors), then applies them to a batch."""

    @abc.abstractmethod
    def sample_params(
        self, shape: torch.Size, device: torch.device, generator: torch.Generator | None = None
    ) -> Params:
        """Random parameters for a batch of the given (B, C, H, W) shape, drawn on `device`."""

    @abc.abstractmethod
    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """Apply parameters from `sample_params` to a uint8 batch."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, self.sample_params(images.shape, images.device, generator))


@dataclasses.dataclass(frozen=True)
class HorizontalFlipStep(DeviceStep):
    """``RandomHorizontalFlip(p)``: each image flipped with probability p."""

    p: float

    def sample_params(
        self, shape: torch.Size, device: torch.device, generator: torch.Generator | None = None
    ) -> Params:
        return {"flip": torch.rand(shape[0], device=device, generator=generator) < self.p}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return torch.where(_per_sample(params["flip"]), images.flip(-1), images)


@dataclasses.dataclass(frozen=True)
class PadCropStep(DeviceStep):
    """``RandomCrop(size, padding, pad_if_needed, fill, padding_mode)``: a uniformly placed crop of the padded
    image, per sample."""

    size: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, right, top, bottom (torchvision's order)
    padding_mode: str = "constant"
    fill: tuple[float, ...] = (0.0,)
    pad_if_needed: bool = False

    def padding_for(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The padding applied to an image of this size, including what pad_if_needed adds."""
        left, right, top, bottom = self.padding
        if self.pad_if_needed:
            extra_h = max(0, self.size[0] - (height + top + bottom))
            extra_w = max(0, self.size[1] - (width + left + right))
            left, right, top, bottom = left + extra_w, right + extra_w, top + extra_h, bottom + extra_h
        if height + top + bottom < self.size[0] or width + left + right < self.size[1]:
            raise UserError(
                f"RandomCrop size {self.size} is larger than the padded {height}x{width} images. "
                "Lower the crop size or set pad_if_needed=true"
            )
        return left, right, top, bottom

    def sample_params(
        self, shape: torch.Size, device: torch.device, generator: torch.Generator | None = None
    ) -> Params:
        left, right, top, bottom = self.padding_for(shape[-2], shape[-1])
        spare_h = shape[-2] + top + bottom - self.size[0]
        spare_w = shape[-1] + left + right - self.size[1]
        return {
            "top": torch.randint(0, spare_h + 1, (shape[0],), device=device, generator=generator),
            "left": torch.randint(0, spare_w + 1, (shape[0],), device=device, generator=generator),
        }

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        padding = self.padding_for(images.shape[-2], images.shape[-1])
        return crop_padded_batch(
            images, params["top"], params["left"], self.size, padding, self.padding_mode, self.fill
        )


@dataclasses.dataclass(frozen=True)
class RotationStep(DeviceStep):
    """``RandomRotation(degrees, interpolation, center, fill)`` with expand=False: angle ~ U(lo, hi) per sample
    (drawn in float32, like torchvision)."""

    degrees: tuple[float, float]
    mode: str = "nearest"
    center: tuple[float, float] | None = None
    fill: Fill = (0.0,)

    def sample_params(
        self, shape: torch.Size, device: torch.device, generator: torch.Generator | None = None
    ) -> Params:
        angle = torch.empty(shape[0], device=device).uniform_(*self.degrees, generator=generator)
        return {"angle": angle}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return rotate_batch(images, params["angle"], self.mode, self.fill, self.center)


_JITTER: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "brightness": adjust_brightness_batch,
    "contrast": adjust_contrast_batch,
    "saturation": adjust_saturation_batch,
    "hue": adjust_hue_batch,
}


@dataclasses.dataclass(frozen=True)
class ColorJitterStep(DeviceStep):
    """``ColorJitter``: per sample, a factor for each enabled adjustment and its own random order of them.

    The order is applied in rounds: in round r every sample takes the adjustment its permutation puts at r;
    all enabled adjustments are computed for the batch and each sample selects its own with torch.where.
    """

    ranges: tuple[tuple[str, tuple[float, float]], ...]  # enabled adjustments in torchvision's order

    def sample_params(
        self, shape: torch.Size, device: torch.device, generator: torch.Generator | None = None
    ) -> Params:
        batch = shape[0]
        factors = [
            torch.empty(batch, device=device).uniform_(low, high, generator=generator) for _, (low, high) in self.ranges
        ]
        order = torch.rand(batch, len(self.ranges), device=device, generator=generator).argsort(dim=1)
        return {"factors": torch.stack(factors, dim=1).double(), "order": order}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        factors, order = params["factors"], params["order"]
        for round_ in range(len(self.ranges)):
            chosen = _per_sample(order[:, round_])
            out = images
            for index, (name, _) in enumerate(self.ranges):
                out = torch.where(chosen == index, _JITTER[name](images, factors[:, index]), out)
            images = out
        return images


@dataclasses.dataclass(frozen=True)
class SharpnessStep(DeviceStep):
    """``RandomAdjustSharpness(sharpness_factor, p)``: each image sharpened with probability p."""

    factor: float
    p: float = 0.5

    def sample_params(
        self, shape: torch.Size, device: torch.device, generator: torch.Generator | None = None
    ) -> Params:
        return {"apply": torch.rand(shape[0], device=device, generator=generator) < self.p}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        factors = torch.full((images.shape[0],), self.factor, dtype=torch.float64, device=images.device)
        return torch.where(_per_sample(params["apply"]), adjust_sharpness_batch(images, factors), images)


_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_COLOUR: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None] = {
    "Identity": None,
    "Brightness": lambda images, m: adjust_brightness_batch(images, 1.0 + m),
    "Color": lambda images, m: adjust_saturation_batch(images, 1.0 + m),
    "Contrast": lambda images, m: adjust_contrast_batch(images, 1.0 + m),
    "Sharpness": lambda images, m: adjust_sharpness_batch(images, 1.0 + m),
    "Posterize": lambda images, m: posterize_batch(images, m.trunc().long()),
    "Solarize": lambda images, m: solarize_batch(images, 255.0 * m),
    "AutoContrast": lambda images, m: autocontrast_batch(images),
    "Equalize": lambda images, m: equalize_batch(images),
    "Invert": lambda images, m: images.bitwise_not(),
}
_NEUTRAL = {"Posterize": 8.0, "Solarize": 1.0}  # magnitude that leaves an image as it is (others: 0)


@dataclasses.dataclass(frozen=True)
class AutoAugmentStep(DeviceStep):
    """``RandAugment`` / ``TrivialAugmentWide``: `num_ops` rounds, in each of which every sample draws its own
    op uniformly from the class's ``_AUGMENTATION_SPACE``, its magnitude (the fixed bin `magnitude_bin`, or a
    uniform bin when None) and, for signed ops, a random sign.

    A round applies all geometric ops as one per-sample affine matrix through one grid_sample, computes each
    colour/histogram op for the whole batch, and lets every sample select its own result.
    """

    ops: tuple[str, ...]
    magnitude_fns: tuple[Callable[[int, int, int], torch.Tensor | None], ...] = dataclasses.field(repr=False)
    signed: tuple[bool, ...] = dataclasses.field(repr=False)
    num_ops: int = 1
    magnitude_bin: int | None = None
    num_bins: int = 31
    mode: str = "nearest"
    fill: Fill = None
    _tables: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def tables(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(ops, bins) float64 magnitudes for this image size and the (ops,) signed flags, on `device`; built
        from torchvision's own magnitude functions once per size and device."""
        key = (height, width, device)
        if key not in self._tables:
            rows = []
            for fn in self.magnitude_fns:
                values = fn(self.num_bins, height, width)
                rows.append(torch.zeros(self.num_bins) if values is None else values)
            table = torch.stack([row.to(torch.float64) for row in rows])
            self._tables[key] = (table.to(device), torch.tensor(self.signed).to(device))
        return self._tables[key]

    def sample_params(
        self, shape: torch.Size, device: torch.device, generator: torch.Generator | None = None
    ) -> Params:
        table, signed = self.tables(shape[-2], shape[-1], device)
        size = (self.num_ops, shape[0])
        op = torch.randint(0, len(self.ops), size, device=device, generator=generator)
        if self.magnitude_bin is None:
            bin_ = torch.randint(0, self.num_bins, size, device=device, generator=generator)
        else:
            bin_ = torch.full(size, self.magnitude_bin, device=device, dtype=torch.long)
        negate = (torch.rand(size, device=device, generator=generator) <= 0.5) & signed[op]
        magnitude = table[op, bin_]
        return {"op": op, "bin": bin_, "negate": negate, "magnitude": torch.where(negate, -magnitude, magnitude)}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        for round_ in range(self.num_ops):
            images = self._apply_round(images, params["op"][round_], params["magnitude"][round_])
        return images

    def _apply_round(self, images: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
        def chosen(name: str) -> torch.Tensor:
            return op == self.ops.index(name) if name in self.ops else torch.zeros_like(op, dtype=torch.bool)

        def only(name: str, value: torch.Tensor) -> torch.Tensor:
            return torch.where(chosen(name), value, _NEUTRAL.get(name, 0.0))

        out = images
        if any(name in self.ops for name in _GEOMETRIC):
            height, width = images.shape[-2:]
            shear = chosen("ShearX") | chosen("ShearY")
            matrices = inverse_affine_matrix(
                -only("Rotate", magnitude.remainder(360.0)),  # F.rotate: angle % 360, then the matrix of -angle
                translate=(only("TranslateX", magnitude.trunc()), only("TranslateY", magnitude.trunc())),
                shear=(
                    only("ShearX", magnitude.atan() * _RAD_TO_DEG),  # degrees(atan(m)), as torchvision
                    only("ShearY", magnitude.atan() * _RAD_TO_DEG),
                ),
                center=(torch.where(shear, -0.5 * width, 0.0), torch.where(shear, -0.5 * height, 0.0)),
            )
            moved = affine_batch(images, matrices, self.mode, self.fill)
            geometric = torch.stack([chosen(name) for name in _GEOMETRIC]).any(dim=0)
            out = torch.where(_per_sample(geometric), moved, images)
        for name in self.ops:
            kernel = _COLOUR.get(name)
            if kernel is not None:
                out = torch.where(_per_sample(chosen(name)), kernel(images, only(name, magnitude)), out)
        return out


@dataclasses.dataclass(frozen=True)
class ResizedCropStep(DeviceStep):
    """``RandomResizedCrop(size, scale, ratio, antialias)`` with bilinear interpolation: per sample a box drawn
    like torchvision (10 area/aspect attempts, first valid one, else the central fallback), then resized.

    The 10 attempts are drawn for every sample at once and each takes its first valid one, which is the same
    distribution as torchvision's sequential rejection loop.
    """

    size: tuple[int, int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    antialias: bool = True
    attempts: int = 10
    log_ratio: tuple[float, float] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        log_ratio = torch.log(torch.tensor(self.ratio))  # float32, as torchvision's bounds for the aspect draw
        object.__setattr__(self, "log_ratio", (float(log_ratio[0]), float(log_ratio[1])))

    def _fallback(self, height: int, width: int) -> tuple[int, int]:
        """torchvision's central-crop fallback box (h, w) after 10 failed attempts."""
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            return int(round(width / min(self.ratio))), width
        if in_ratio > max(self.ratio):
            return height, int(round(height * max(self.ratio)))
        return height, width

    def sample_params(
        self, shape: torch.Size, device: torch.device, generator: torch.Generator | None = None
    ) -> Params:
        batch, height, width = shape[0], shape[-2], shape[-1]
        draws = (batch, self.attempts)
        area = height * width * torch.empty(draws, device=device).uniform_(*self.scale, generator=generator).double()
        aspect = torch.empty(draws, device=device).uniform_(*self.log_ratio, generator=generator)
        aspect = aspect.exp().double()
        w, h = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
        valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = valid.int().argmax(dim=1, keepdim=True)  # the first valid attempt (0 if none)
        found = valid.any(dim=1)
        fallback_h, fallback_w = self._fallback(height, width)
        h = torch.where(found, h.gather(1, first).squeeze(1), fallback_h)
        w = torch.where(found, w.gather(1, first).squeeze(1), fallback_w)
        offsets = torch.rand(2, batch, device=device, generator=generator, dtype=torch.float64)
        top = torch.minimum((offsets[0] * (height - h + 1)).floor().long(), height - h)
        left = torch.minimum((offsets[1] * (width - w + 1)).floor().long(), width - w)
        top = torch.where(found, top, (height - h) // 2)
        left = torch.where(found, left, (width - w) // 2)
        return {"top": top, "left": left, "height": h, "width": w}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return resized_crop_batch(
            images, params["top"], params["left"], params["height"], params["width"], self.size, self.antialias
        )


class DeviceAugment:
    """A preset as a sequence of `DeviceStep`s, applied in order to uint8 (B, C, H, W) batches."""

    def __init__(self, steps: Sequence[DeviceStep]) -> None:
        self.steps = list(steps)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for step in self.steps:
            images = step(images, generator)
        return images

    def __repr__(self) -> str:
        return f"DeviceAugment({self.steps})"


# -- translation from torchvision ---------------------------------------------------------------------------


def _unsupported(what: str) -> UserError:
    return UserError(
        f"augmentation {what} has no device-resident version (supported: RandomCrop, RandomResizedCrop, "
        "RandomHorizontalFlip, RandomRotation, ColorJitter, RandomAdjustSharpness, RandAugment, "
        "TrivialAugmentWide). Set data.on_gpu=false to run it on the CPU"
    )


def _pad_crop(t: v2.RandomCrop) -> DeviceStep:
    padding = tuple(t.padding) if t.padding else (0, 0, 0, 0)
    fill = _fill(t.fill) or (0.0,)
    return PadCropStep(tuple(t.size), padding, t.padding_mode, fill, t.pad_if_needed)  # type: ignore[arg-type]


def _rotation(t: v2.RandomRotation) -> DeviceStep:
    if t.expand:
        raise _unsupported("RandomRotation(expand=True)")
    center = None if t.center is None else (float(t.center[0]), float(t.center[1]))
    mode = _interpolation(t.interpolation, ("nearest", "bilinear"), "RandomRotation")
    return RotationStep((float(t.degrees[0]), float(t.degrees[1])), mode, center, _fill(t.fill))


def _color_jitter(t: v2.ColorJitter) -> DeviceStep | None:
    ranges = tuple(
        (name, (float(value[0]), float(value[1])))
        for name in ("brightness", "contrast", "saturation", "hue")
        if (value := getattr(t, name)) is not None
    )
    return ColorJitterStep(ranges) if ranges else None


def _auto_augment(t: v2.RandAugment | v2.TrivialAugmentWide) -> DeviceStep:
    space = type(t)._AUGMENTATION_SPACE
    unknown = [name for name in space if name not in _GEOMETRIC and name not in _COLOUR]
    if unknown:
        raise _unsupported(f"{type(t).__name__} op {unknown[0]}")
    rand_augment = isinstance(t, v2.RandAugment)
    return AutoAugmentStep(
        ops=tuple(space),
        magnitude_fns=tuple(fn for fn, _ in space.values()),
        signed=tuple(bool(signed) for _, signed in space.values()),
        num_ops=t.num_ops if rand_augment else 1,
        magnitude_bin=t.magnitude if rand_augment else None,
        num_bins=t.num_magnitude_bins,
        mode=_interpolation(t.interpolation, ("nearest", "bilinear"), type(t).__name__),
        fill=_fill(t.fill),
    )


def _resized_crop(t: v2.RandomResizedCrop) -> DeviceStep:
    _interpolation(t.interpolation, ("bilinear",), "RandomResizedCrop")
    scale, ratio = (float(t.scale[0]), float(t.scale[1])), (float(t.ratio[0]), float(t.ratio[1]))
    return ResizedCropStep(tuple(t.size), scale, ratio, bool(t.antialias))  # type: ignore[arg-type]


# Exact types: a subclass may sample differently, so it is refused rather than silently approximated.
_BUILDERS: dict[type, Callable[[Any], DeviceStep | None]] = {
    v2.RandomHorizontalFlip: lambda t: HorizontalFlipStep(float(t.p)) if t.p > 0 else None,
    v2.RandomCrop: _pad_crop,
    v2.RandomRotation: _rotation,
    v2.ColorJitter: _color_jitter,
    v2.RandomAdjustSharpness: lambda t: SharpnessStep(float(t.sharpness_factor), float(t.p)) if t.p > 0 else None,
    v2.RandAugment: _auto_augment,
    v2.TrivialAugmentWide: _auto_augment,
    v2.RandomResizedCrop: _resized_crop,
}


def flatten_transforms(transform: nn.Module | None) -> list[nn.Module]:
    """The transforms of a (possibly nested) ``v2.Compose`` in order, without identities."""
    if transform is None or isinstance(transform, (nn.Identity, v2.Identity)):
        return []
    if isinstance(transform, v2.Compose):
        return [step for inner in transform.transforms for step in flatten_transforms(inner)]
    return [transform]


def device_augment_from(transform: nn.Module | None, image_size: int | None = None) -> DeviceAugment | None:
    """Translate a CPU torchvision-v2 augment preset into its vectorised device form (None: no augmentation).

    Raises `UserError` for a transform (or option) without a device version, so a run fails at setup rather
    than silently training with a different augmentation. `image_size`, when given, checks that crops fit.
    """
    steps = []
    for transform_ in flatten_transforms(transform):
        builder = _BUILDERS.get(type(transform_))
        if builder is None:
            raise _unsupported(type(transform_).__name__)
        step = builder(transform_)
        if isinstance(step, PadCropStep) and image_size is not None:
            step.padding_for(image_size, image_size)
        if step is not None:
            steps.append(step)
    return DeviceAugment(steps) if steps else None
