"""Decode image folders on the training device: the building blocks.

CPU DataLoader workers cannot decode JPEGs as fast as a GPU trains a light model. Here the workers only read
the file bytes (`EncodedImages`, `collate_encoded`); the whole batch is then decoded in one
`torchvision.io.decode_jpeg` call on the device (nvjpeg on CUDA, `decode_batch`) and cropped to a uniform
batch there (`train_crops` / `TrainCrops`, `eval_crops`), reproducing what the CPU path's torchvision
transforms do image by image:

* `train_crops` draws every crop box with torchvision's own `RandomResizedCrop` algorithm (same random
  calls in the same order, so with the same seed the same boxes as torchvision); flips are drawn and applied
  for the whole batch at once.
* `eval_crops` is ``Resize(round(size * resize_ratio))`` + ``CenterCrop(size)``.

On CUDA both resize the whole batch together (`resample`: antialiased bilinear weights as batched matrix
products, a fixed number of kernels per batch plus one copy per image), within one grey level of torchvision's
per-image resize; on a CPU they call torchvision image by image, exactly.

So that one decoder handles every batch, files that are not plain JPEGs (PNG, BMP, …, and CMYK/YCCK JPEGs,
which libjpeg and PIL convert to RGB differently and nvjpeg may not convert at all) are decoded by the worker
with PIL to RGB, exactly as the CPU path's ``decode_rgb`` does, and re-encoded as JPEG quality 95. That costs
one lossy round trip for those files only (a mean error of about one grey level on photo-like images, two
or three on the sharp colour edges of palette graphics); grey and RGB JPEGs go to the device untouched and
``mode=ImageReadMode.RGB`` converts grey ones there. The decoded pixels differ from PIL's by JPEG decoder
tolerance (libjpeg-turbo or nvjpeg against PIL's libjpeg: about one grey level on average), so this path is
not bit-identical to the CPU path; for the same decoded image the crops are (on CUDA, within one grey level).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.io import encode_jpeg, read_file
from torchvision.transforms import InterpolationMode, v2

from transferlab.data.device_augment import flatten_transforms
from transferlab.data.device_jpeg import decode_jpeg_on_device
from transferlab.data.images import decode_rgb
from transferlab.utils.errors import UserError

JPEG_MAGIC = b"\xff\xd8\xff"
REENCODE_QUALITY = 95  # high enough that the re-encoded non-JPEG files lose ~1 grey level on average

# Start-of-frame markers (SOF0–SOF15 less DHT, JPG and DAC): their segment holds the component count.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0–7, SOI: no length field


def jpeg_components(data: bytes | memoryview) -> int | None:
    """Number of colour components of a JPEG (1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK), read from its frame
    header; None when no frame header comes before the scan data (a damaged file)."""
    pos, end = 2, len(data)
    while pos + 1 < end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if marker in _SOF_MARKERS:
            # FF Cn, length (2), precision (1), height (2), width (2), components (1)
            return data[pos + 9] if pos + 9 < end else None
        if marker in (0xD9, 0xDA) or pos + 3 >= end:  # end of image or scan before any frame header
            return None
        pos += 2 + (data[pos + 2] << 8 | data[pos + 3])
    return None


def _reencoded_rgb(path: str) -> torch.Tensor:
    """`path` decoded to RGB as the CPU path decodes it (`images.decode_rgb`) and re-encoded as a quality-95
    JPEG, so the device decodes every image of a batch with the same call."""
    return encode_jpeg(decode_rgb(path), quality=REENCODE_QUALITY)


def encoded_image(path: str) -> torch.Tensor:
    """The JPEG bytes of `path` as a 1-D uint8 tensor: the file itself for a grey or colour JPEG, otherwise
    the image re-encoded by `_reencoded_rgb`."""
    try:
        data = read_file(path)
    except (RuntimeError, OSError) as err:
        raise UserError(f"cannot read image {path} ({err}). Remove or replace the file") from err
    head = memoryview(data.numpy())
    if bytes(head[:3]) == JPEG_MAGIC and jpeg_components(head) in (1, 3):
        return data
    return _reencoded_rgb(path)  # also names a damaged JPEG whose header cannot be parsed


class EncodedImages(Dataset):
    """``(path, target)`` samples (as ``ImageFolder.samples``) served as ``(jpeg_bytes, target)``: the workers
    only read files, the device decodes (`decode_batch`)."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str] | None = None) -> None:
        self.samples = list(samples)
        self.targets = [target for _, target in self.samples]
        self.classes = list(classes) if classes is not None else []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        return encoded_image(path), target


def collate_encoded(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Keep the variable-length byte tensors as a list (what ``decode_jpeg`` takes); stack the targets."""
    return [encoded for encoded, _ in batch], torch.tensor([target for _, target in batch], dtype=torch.long)


def decode_batch(encoded: list[torch.Tensor], device: torch.device | str) -> list[torch.Tensor]:
    """Decode a batch of JPEGs in one call on `device` (nvjpeg on CUDA, through `decode_jpeg_on_device`, which
    keeps the decoder off memory the training stream still uses): uint8 (3, H, W) RGB tensors there.

    When the batch call fails, the images are decoded one by one to name the culprit's position in the batch.
    """
    if not encoded:
        return []
    try:
        return decode_jpeg_on_device(encoded, device)
    except RuntimeError as batch_err:
        for index, data in enumerate(encoded):
            try:
                decode_jpeg_on_device([data], device)
            except RuntimeError as err:
                reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
                raise UserError(
                    f"cannot decode image {index} of a batch of {len(encoded)} ({reason}). "
                    "Find the damaged file (e.g. with python -m PIL) and remove or replace it"
                ) from err
        raise UserError(f"cannot decode a batch of {len(encoded)} JPEG images on {device} ({batch_err})") from batch_err


# -- batched antialiased resampling ------------------------------------------------------------------------

# Padded float64 elements resampled at once (256 MiB): bounds the memory a batch of large photos takes.
RESAMPLE_BUDGET = 2**25


@dataclasses.dataclass(frozen=True)
class Span:
    """How one axis of one image becomes `size` output pixels: source pixels ``[start, start + length)`` are
    resized (antialiased bilinear) to `resized` pixels, of which outputs ``offset .. offset + size - 1`` are
    kept; outputs outside ``[0, resized)`` are zero (the padding ``CenterCrop`` adds to a small image)."""

    start: int
    length: int
    resized: int
    offset: int = 0


def aa_bilinear_weights(spans: torch.Tensor, padded: int, size: int) -> torch.Tensor:
    """(B, size, padded) float64 weights, row i of image b mapping source pixels ``0 .. length-1`` (the span's
    pixels, moved to the start) to output pixel i. `spans` is (B, 4): length, resized, offset (and start, unused).

    The same taps and weights as PyTorch's antialiased bilinear ``interpolate`` (``_upsample_bilinear2d_aa``,
    align_corners=False), which torchvision's ``resize`` calls: a triangle filter stretched by the downscale
    factor, over pixels ``trunc(centre ± support + 0.5)``, normalised to sum 1. Computed in float64, where the
    kernel uses float32: the weights differ by ~1e-7 relative."""
    spans = spans.to(torch.float64)
    length, resized, offset = (spans[:, k, None, None] for k in (1, 2, 3))
    scale = length / resized
    down = scale >= 1
    support = torch.where(down, scale, 1.0)
    invscale = torch.where(down, 1 / scale, 1.0)
    out = torch.arange(size, dtype=torch.float64, device=spans.device)[None, :, None] + offset
    centre = scale * (out + 0.5)
    first = (centre - support + 0.5).trunc().clamp(min=0)
    stop = torch.minimum((centre + support + 0.5).trunc(), length)
    source = torch.arange(padded, dtype=torch.float64, device=spans.device)[None, None, :]
    weights = (1 - ((source - centre + 0.5) * invscale).abs()).clamp(min=0)
    weights = torch.where((source >= first) & (source < stop), weights, 0.0)
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-300)
    return torch.where((out >= 0) & (out < resized), weights, 0.0)


def resample(images: Sequence[torch.Tensor], rows: Sequence[Span], cols: Sequence[Span], size: int) -> torch.Tensor:
    """Crop and antialiased-bilinear resize images of different sizes into one (B, C, size, size) uint8 batch
    with batched matrix products: output = Wy @ crop @ Wx^T per image (`aa_bilinear_weights`), the crops
    zero-padded to a common size and resampled in float64, then rounded as torchvision rounds its float result.

    Equals torchvision's per-image ``resize`` on the float image (what it does for uint8 on CUDA) up to float32
    summation order: rarely, a pixel whose exact value is within ~1e-4 of a half level rounds the other way (at
    most 1 grey level). torchvision's CPU uint8 kernel rounds an intermediate pass to uint8, so it differs from
    both by at most 1 grey level on a few percent of pixels (tests/data/test_jpeg_batches.py).

    Kernel launches: one copy per image (into the padded buffer) and a fixed number per chunk; the images are
    sorted by crop size and cut into chunks of at most `RESAMPLE_BUDGET` padded elements (one chunk for a
    typical batch of photos), so small crops are not padded to the largest.
    """
    device, channels = images[0].device, images[0].shape[0]
    order = sorted(range(len(images)), key=lambda i: (rows[i].length, cols[i].length), reverse=True)
    chunks: list[list[int]] = []
    height = width = 0
    for i in order:
        grown = max(height, rows[i].length), max(width, cols[i].length)
        if chunks and (len(chunks[-1]) + 1) * channels * grown[0] * grown[1] <= RESAMPLE_BUDGET:
            chunks[-1].append(i)
            height, width = grown
        else:
            chunks.append([i])
            height, width = rows[i].length, cols[i].length
    table = torch.tensor([[*dataclasses.astuple(rows[i]), *dataclasses.astuple(cols[i])] for i in order])
    table = _to_device(torch.cat([table.flatten(), torch.tensor(order).argsort()]), device)
    spans, restore = table[: 8 * len(order)].view(-1, 8), table[8 * len(order) :]
    outputs, done = [], 0
    with torch.autocast(device.type, enabled=False):
        for chunk in chunks:
            height = max(rows[i].length for i in chunk)
            width = max(cols[i].length for i in chunk)
            crops = torch.zeros(len(chunk), channels, height, width, dtype=torch.float64, device=device)
            for k, i in enumerate(chunk):
                r, c = rows[i], cols[i]
                crop = images[i][:, r.start : r.start + r.length, c.start : c.start + c.length]
                crops[k, :, : r.length, : c.length] = crop
            wy = aa_bilinear_weights(spans[done : done + len(chunk), :4], height, size)[:, None]
            wx = aa_bilinear_weights(spans[done : done + len(chunk), 4:], width, size)[:, None].transpose(-1, -2)
            # contract the longer axis first: fewer multiply-adds
            outputs.append(wy @ (crops @ wx) if width >= height else (wy @ crops) @ wx)
            done += len(chunk)
    batch = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    # Snapped to 2^-20 first, so that a value exactly half-way between two levels (common: the weights are
    # rational) rounds the same whatever the padding and chunking did to the last bits of the sums.
    batch = batch.index_select(0, restore).mul_(2**20).round_().div_(2**20)
    return batch.round_().clamp_(0, 255).to(torch.uint8)


def _to_device(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host table on `device` without a host sync: staged through pinned memory from PyTorch's caching
    host allocator, which keeps the pinned block until the copy has run (a reused pinned buffer would not)."""
    if device.type == "cuda":
        return table.pin_memory().to(device, non_blocking=True)
    return table.to(device)


# -- training crops ----------------------------------------------------------------------------------------


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` drawn as torchvision's ``v2.RandomResizedCrop`` draws it: 10
    attempts at a random area fraction and log-uniform aspect ratio, then the central fallback crop. The same
    random calls in the same order (with ``generator=None``, the same boxes for the same global seed).

    Reimplemented rather than calling torchvision's sampler, whose name and signature changed across
    releases (``get_params`` / ``_get_params`` / ``make_params``) and which takes no generator.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))  # float32, as torchvision keeps it
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_crops(
    images: Sequence[torch.Tensor],
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    antialias: bool | None = True,
    batched: bool | None = None,
) -> torch.Tensor:
    """RandomResizedCrop + RandomHorizontalFlip of images of different sizes into one (B, 3, size, size) batch.

    Boxes are drawn per image on the host (`random_resized_crop_box`, a CPU `generator`); flips are drawn after
    all boxes and applied to the whole batch. With `batched` (default: on CUDA, where per-image calls cost
    kernel launches and host time) antialiased bilinear crops (the presets') are resized together by `resample`
    (torchvision's pixels up to one grey level); otherwise, and for other interpolations, by torchvision's
    ``resized_crop`` image by image (on a CPU, its uint8 kernel is faster than dense products). With
    ``flip_p=0`` and ``generator=None`` the boxes are those ``v2.RandomResizedCrop`` draws for the same seed.
    """
    if not images:
        raise ValueError("train_crops needs at least one image")
    boxes = [random_resized_crop_box(image.shape[-2], image.shape[-1], scale, ratio, generator) for image in images]
    batched = images[0].is_cuda if batched is None else batched
    if batched and interpolation == InterpolationMode.BILINEAR and antialias:
        rows = [Span(top, h, size) for top, _, h, _ in boxes]
        cols = [Span(left, w, size) for _, left, _, w in boxes]
        batch = resample(images, rows, cols, size)
    else:
        batch = torch.stack(
            [
                v2.functional.resized_crop(image, *box, [size, size], interpolation=interpolation, antialias=antialias)
                for image, box in zip(images, boxes)
            ]
        )
    flip = torch.rand(len(images), generator=generator) < flip_p  # flipped when rand < p, as torchvision does
    flip = _to_device(flip, batch.device).view(-1, 1, 1, 1)
    return torch.where(flip, batch.flip(-1), batch)


@dataclasses.dataclass(frozen=True)
class TrainCrops:
    """The ``RandomResizedCrop`` (+ ``RandomHorizontalFlip``) augmentation, applied by `train_crops`."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.0
    interpolation: InterpolationMode = InterpolationMode.BILINEAR
    antialias: bool | None = True

    @classmethod
    def from_preset(cls, transform: Any, image_size: int) -> TrainCrops | None:
        """Settings read from a torchvision-v2 preset made of one ``RandomResizedCrop`` to `image_size`² and at
        most one ``RandomHorizontalFlip`` (either order: flipping commutes with the crop's distribution).

        None, so that the caller keeps the CPU path, for anything else: other transforms, subclasses, no
        crop, or a crop to another size (the CPU path would resize it again to `image_size`).
        """
        steps = flatten_transforms(transform)
        crops = [step for step in steps if type(step) is v2.RandomResizedCrop]
        flips = [step for step in steps if type(step) is v2.RandomHorizontalFlip]
        if len(crops) != 1 or len(flips) > 1 or len(crops) + len(flips) != len(steps):
            return None
        crop = crops[0]
        if list(crop.size) != [image_size, image_size] or isinstance(crop.interpolation, int):
            return None  # another size, or a deprecated integer interpolation code
        return cls(
            size=image_size,
            scale=(float(crop.scale[0]), float(crop.scale[1])),
            ratio=(float(crop.ratio[0]), float(crop.ratio[1])),
            flip_p=float(flips[0].p) if flips else 0.0,
            interpolation=InterpolationMode(crop.interpolation),  # some releases keep the string
            antialias=crop.antialias,
        )

    def __call__(self, images: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        return train_crops(
            images, self.size, self.scale, self.ratio, self.flip_p, generator, self.interpolation, self.antialias
        )


# -- evaluation crops --------------------------------------------------------------------------------------


def resized_length(short: int, long: int, resize: int) -> int:
    """The long side after ``v2.Resize(resize)`` brings the short side to `resize` (torchvision truncates)."""
    return int(resize * long / short)


def center_span(length: int, resized: int, size: int) -> Span:
    """``CenterCrop(size)`` of an axis resized from `length` to `resized` pixels: the anchor torchvision computes
    after zero-padding a short axis (half the padding before, rounded down), as a `Span` offset."""
    pad_before = (size - resized) // 2 if size > resized else 0
    padded = max(resized, size)
    return Span(0, length, resized, int(round((padded - size) / 2.0)) - pad_before)


def eval_crops(
    images: Sequence[torch.Tensor], size: int, resize_ratio: float, batched: bool | None = None
) -> torch.Tensor:
    """``v2.Resize(round(size * resize_ratio))`` + ``v2.CenterCrop(size)`` (the CPU path's evaluation) of images
    of different sizes into one batch: with `batched` (default: on CUDA) resized together by `resample`
    (torchvision's pixels up to one grey level), otherwise by torchvision image by image (see `train_crops`)."""
    if not images:
        raise ValueError("eval_crops needs at least one image")
    resize = round(size * resize_ratio)
    if not (images[0].is_cuda if batched is None else batched):
        return torch.stack(
            [
                v2.functional.center_crop(v2.functional.resize(image, [resize], antialias=True), [size, size])
                for image in images
            ]
        )
    rows, cols = [], []
    for image in images:
        height, width = image.shape[-2:]
        new_height = resize if height <= width else resized_length(width, height, resize)
        new_width = resize if width <= height else resized_length(height, width, resize)
        rows.append(center_span(height, new_height, size))
        cols.append(center_span(width, new_width, size))
    return resample(images, rows, cols, size)
