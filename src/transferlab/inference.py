"""The inference interface every task offers `tl-predict`: a `Predictor` takes decoded image files one by one
and writes the task's outputs.

A task builds its predictor (`TransferTask.predictor`) from the run's own file preparation (its datamodule's
`file_transform`, rebuilt from the config stored in the checkpoint) and the user's options, so `tl-predict`
has no task-specific code. Two kinds of output cover the tasks:

* `ClassTable` — one CSV row per file: the ``top_k`` classes and their probabilities (``predictions.csv``);
* `ImageFiles` — one PNG per file (same relative path), from an image-to-image function of any input size.

Images larger than ``tile`` are processed in tiles that overlap by ``overlap`` pixels; each output pixel comes
from the tile where it lies farthest from a tile border (seams at the middle of each overlap), so for a
network whose receptive field reaches at most ``overlap / 2`` pixels the result is identical to processing the
whole image at once, while memory stays bounded by the tile size (a 4000×3000 photo runs on a CPU). Every
output is written to a temporary file and renamed, so a crash never leaves a truncated file.

Libraries: none of torchvision, timm, kornia, torchmetrics or Lightning tiles inference over large images (MONAI's
sliding_window_inference does, a large medical-imaging dependency); tiling here is one function.
"""

from __future__ import annotations

import abc
import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.io import encode_png

from transferlab.constants import PREDICTIONS_FILE
from transferlab.data.images import decode_rgb
from transferlab.utils.errors import UserError
from transferlab.utils.io import write_bytes_atomic

ImageFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # [0, 1] image (+ mask) → [0, 1] image


@dataclass(frozen=True)
class PredictOptions:
    """What the user chose for a `tl-predict` run (conf/predict.yaml)."""

    output: Path
    top_k: int = 5
    tile: int = 512
    overlap: int = 32
    style: str | None = None  # an image name or path, for models that take a style image
    mask: Path | None = None  # an image file, white = missing, for models that take a mask


class Predictor(abc.ABC):
    """Takes the input files one by one (`add`), then writes what is still to write (`finish`)."""

    @abc.abstractmethod
    def add(self, image: torch.Tensor, relative: Path) -> None:
        """Predict for one decoded file (uint8 RGB (3, H, W)), found at `relative` under the input root."""

    @abc.abstractmethod
    def finish(self) -> str:
        """Write what remains; a one-line message saying where the outputs are."""


class ClassTable(Predictor):
    """Class probabilities per file → ``predictions.csv`` (file, then class/probability for the top ``top_k``)."""

    def __init__(
        self,
        logits: Callable[[torch.Tensor], torch.Tensor],
        prepare: Callable[[torch.Tensor], torch.Tensor],
        class_names: list[str],
        options: PredictOptions,
        device: torch.device,
    ) -> None:
        self.logits, self.prepare, self.class_names, self.device = logits, prepare, class_names, device
        self.path = options.output / PREDICTIONS_FILE
        self.k = min(options.top_k, len(class_names))
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer)
        self.writer.writerow(["file", *[f"{kind}_{i}" for i in range(1, self.k + 1) for kind in ("class", "prob")]])

    @torch.inference_mode()
    def add(self, image: torch.Tensor, relative: Path) -> None:
        probs = self.logits(self.prepare(image)[None].to(self.device)).softmax(dim=-1)[0]
        top = probs.topk(self.k)
        pairs = [
            v for i, p in zip(top.indices.tolist(), top.values.tolist()) for v in (self.class_names[i], f"{p:.6f}")
        ]
        self.writer.writerow([str(relative), *pairs])

    def finish(self) -> str:
        write_bytes_atomic(self.path, self.buffer.getvalue().encode())
        return f"Predictions: {self.path}"


class ImageFiles(Predictor):
    """An image-to-image function per file → one PNG each, tiled, `scale` times the input size."""

    def __init__(
        self,
        fn: ImageFn,
        prepare: Callable[[torch.Tensor], torch.Tensor],
        options: PredictOptions,
        device: torch.device,
        scale: int = 1,
        mask: torch.Tensor | None = None,
    ) -> None:
        check_tiling(options.tile, options.overlap)
        self.fn, self.prepare, self.device, self.scale, self.mask = fn, prepare, device, scale, mask
        self.options = options
        self.written = 0

    def add(self, image: torch.Tensor, relative: Path) -> None:
        image = self.prepare(image)[None].to(self.device).float() / 255
        if self.mask is not None and self.mask.shape[-2:] != image.shape[-2:]:
            raise UserError(
                f"mask is {tuple(self.mask.shape[-2:])} but {relative} is {tuple(image.shape[-2:])}; sizes must match"
            )
        result = tiled(self.fn, image, self.options.tile, self.options.overlap, self.scale, self.mask)
        png = encode_png(to_uint8(result[0]).cpu()).numpy().tobytes()
        write_bytes_atomic(self.options.output / relative.with_suffix(".png"), png)
        self.written += 1

    def finish(self) -> str:
        return f"Wrote {self.written} image(s) to {self.options.output}"


def read_mask(path: Path, device: torch.device) -> torch.Tensor:
    """A mask image (white = missing) as a (1, 1, H, W) float tensor of 0/1."""
    return (decode_rgb(path.expanduser())[:1] > 127).float()[None].to(device)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


# -- tiling ----------------------------------------------------------------------------------------
def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: every ``tile - overlap`` pixels, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return [*starts, length - tile]


def seams(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """The part of each tile that is kept: from the middle of the overlap before it to the middle after it."""
    cuts = [0] + [(nxt + prev + tile) // 2 for prev, nxt in zip(starts, starts[1:])] + [length]
    return list(zip(cuts, cuts[1:]))


def check_tiling(tile: int, overlap: int) -> None:
    if overlap < 0 or tile < 1:
        raise UserError(f"tile must be positive and overlap >= 0, got tile={tile}, overlap={overlap}")
    if tile <= 2 * overlap:
        raise UserError(
            f"tile={tile} is too small for overlap={overlap}: each tile must be larger than twice the overlap. "
            "Raise tile or lower overlap"
        )


@torch.inference_mode()
def tiled(
    fn: ImageFn, image: torch.Tensor, tile: int, overlap: int, scale: int = 1, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply `fn` to a (1, C, H, W) image tile by tile; the output is `scale` times the input size."""
    check_tiling(tile, overlap)
    h, w = image.shape[-2:]
    if h <= tile and w <= tile:
        return fn(image, mask)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out: torch.Tensor | None = None
    for y0, (keep_y0, keep_y1) in zip(ys, seams(ys, tile, h)):
        for x0, (keep_x0, keep_x1) in zip(xs, seams(xs, tile, w)):
            window = (..., slice(y0, y0 + tile), slice(x0, x0 + tile))
            result = fn(image[window], None if mask is None else mask[window])
            if out is None:
                out = result.new_empty(1, result.shape[1], h * scale, w * scale)
            s = scale
            out[..., keep_y0 * s : keep_y1 * s, keep_x0 * s : keep_x1 * s] = result[
                ..., (keep_y0 - y0) * s : (keep_y1 - y0) * s, (keep_x0 - x0) * s : (keep_x1 - x0) * s
            ]
    return out
