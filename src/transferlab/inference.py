"""The inference interface every task offers `tl-predict` and `tl-export`: a `Predictor` takes decoded image files
one by one and writes the task's outputs; an `ExportSpec` says what a task's stand-alone inference model is.

A task builds its predictor (`TransferTask.predictor`) from the run's own file preparation (its datamodule's
`file_transform`, rebuilt from the config stored in the checkpoint) and the user's options, so `tl-predict`
has no task-specific code. Two kinds of output cover the tasks:

* `ClassTable` — one CSV row per file: the ``top_k`` classes and their probabilities (``predictions.csv``),
  the files classified ``batch_size`` at a time;
* `ImageFiles` — one PNG per file (same relative path), from an image-to-image function of any input size.

Both take the model as a plain function of tensors, so a task's own forward and an exported ONNX graph run
through the same file preparation and write the same outputs (`transferlab.exported`).

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
import base64
import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.io import decode_png, encode_png

from transferlab.constants import PREDICTIONS_FILE
from transferlab.data.images import decode_rgb
from transferlab.utils.errors import UserError
from transferlab.utils.io import write_bytes_atomic

ELSEWHERE = "output=<a folder on another disk>"  # what a failed write of tl-predict's outputs suggests
ImageFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # [0, 1] image (+ mask) → [0, 1] image


@dataclass(frozen=True)
class PredictOptions:
    """What the user chose for a `tl-predict` run (conf/predict.yaml)."""

    output: Path
    top_k: int = 5
    batch_size: int = 32  # classification: files per forward pass
    tile: int = 512
    overlap: int = 32
    style: str | None = None  # an image name or path, for models that take a style image
    mask: Path | None = None  # an image file, white = missing, for models that take a mask


@dataclass(frozen=True)
class ExportSpec:
    """A task's stand-alone inference model (`TransferTask.export_module`), as `tl-export` writes it.

    `module` takes the `inputs` in order — float images in [0, 1], the main one named ``image`` — and returns
    one tensor named `output`: `LOGITS` (a classifier: `ClassTable` reads them) or `OUTPUT_IMAGE` (an
    image-to-image model, [0, 1]: `ImageFiles` writes it). `dynamic` names the axes of each input that may
    take any length (batch, height, width); the examples fix the others. `metadata` is what `tl-predict`
    needs besides the graph (class names, up-scale factor, …), JSON-serialisable values.
    """

    module: nn.Module
    inputs: dict[str, torch.Tensor]
    output: str
    dynamic: dict[str, dict[int, str]]
    metadata: dict[str, object]


LOGITS, OUTPUT_IMAGE = "logits", "output_image"  # an exported model's output names (an input keeps its own name)
BATCH_AXIS = {0: "batch"}
IMAGE_AXES = {0: "batch", 2: "height", 3: "width"}


class Clamped(nn.Module):
    """`net`'s output clamped to [0, 1]: what `tl-predict` writes (a module, so it can be exported)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).clamp(0, 1)


class Predictor(abc.ABC):
    """Takes the input files one by one (`add`), then writes what is still to write (`finish`)."""

    @abc.abstractmethod
    def add(self, image: torch.Tensor, relative: Path) -> None:
        """Predict for one decoded file (uint8 RGB (3, H, W)), found at `relative` under the input root."""

    @abc.abstractmethod
    def finish(self) -> str:
        """Write what remains; a one-line message saying where the outputs are."""


class ClassTable(Predictor):
    """Class probabilities per file → ``predictions.csv`` (file, then class/probability for the top ``top_k``).

    Files are classified ``options.batch_size`` at a time: a classifier's prepared inputs all have one size,
    so they stack, and one forward pass over a batch costs far less than one per file. A batch holds
    consecutive files of the same prepared size (a datamodule whose preparation kept sizes apart would get
    smaller batches, never a wrong one); rows keep the order of the files.
    """

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
        self.batch_size = options.batch_size
        self.pending: list[tuple[torch.Tensor, Path]] = []
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer)
        self.writer.writerow(["file", *[f"{kind}_{i}" for i in range(1, self.k + 1) for kind in ("class", "prob")]])

    def add(self, image: torch.Tensor, relative: Path) -> None:
        prepared = self.prepare(image)
        if self.pending and self.pending[0][0].shape != prepared.shape:
            self.flush()
        self.pending.append((prepared, relative))
        if len(self.pending) >= self.batch_size:
            self.flush()

    @torch.inference_mode()
    def flush(self) -> None:
        """Classify the pending files in one forward pass and add their rows."""
        if not self.pending:
            return
        images = torch.stack([image for image, _ in self.pending]).to(self.device)
        top = self.logits(images).softmax(dim=-1).topk(self.k)
        for (_, relative), indices, values in zip(self.pending, top.indices.tolist(), top.values.tolist()):
            pairs = [v for i, p in zip(indices, values) for v in (self.class_names[i], f"{p:.6f}")]
            self.writer.writerow([str(relative), *pairs])
        self.pending = []

    def finish(self) -> str:
        self.flush()
        write_bytes_atomic(self.path, self.buffer.getvalue().encode(), elsewhere=ELSEWHERE)
        return f"Predictions: {self.path}"


class ImageFiles(Predictor):
    """An image-to-image function per file → one PNG each, tiled, `scale` times the input size.

    One file at a time, never batched: files differ in size (they cannot stack without resizing, which
    would change the output), large ones are already split into tiles whose memory a batch would multiply,
    and a convolution over a whole image keeps the cores busy, so batching would save little but the
    per-call overhead that a full-size image dwarfs.
    """

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
        image = self.prepare(image)[None].float() / 255  # on the host: `tiled` moves one tile at a time
        if self.mask is not None and self.mask.shape[-2:] != image.shape[-2:]:
            raise UserError(
                f"mask is {tuple(self.mask.shape[-2:])} but {relative} is {tuple(image.shape[-2:])}; sizes must match"
            )
        options = self.options
        result = tiled(self.fn, image, options.tile, options.overlap, self.scale, self.mask, device=self.device)
        png = encode_png(to_uint8(result[0]).cpu()).numpy().tobytes()
        write_bytes_atomic(self.options.output / relative.with_suffix(".png"), png, elsewhere=ELSEWHERE)
        self.written += 1

    def finish(self) -> str:
        return f"Wrote {self.written} image(s) to {self.options.output}"


def read_mask(path: Path, device: torch.device) -> torch.Tensor:
    """A mask image (white = missing) as a (1, 1, H, W) float tensor of 0/1."""
    return (decode_rgb(path.expanduser())[:1] > 127).float()[None].to(device)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def png_base64(image: torch.Tensor) -> str:
    """A uint8 (3, H, W) image as base64 PNG text (lossless), to travel inside a model file's metadata."""
    return base64.b64encode(encode_png(image.cpu()).numpy().tobytes()).decode("ascii")


def from_png_base64(text: str) -> torch.Tensor:
    """The uint8 (3, H, W) image `png_base64` wrote."""
    return decode_png(torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8))


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
    fn: ImageFn,
    image: torch.Tensor,
    tile: int,
    overlap: int,
    scale: int = 1,
    mask: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Apply `fn` to a (1, C, H, W) image tile by tile; the output is `scale` times the input size.

    `fn` runs on `device` (default: the image's). A tiled image and its output stay where `image` is (the host,
    for `tl-predict`): only one tile and its result are on the GPU at a time, so an image larger than the GPU's
    memory (a ×4 output is 16 times the input) still goes through."""
    check_tiling(tile, overlap)
    device = image.device if device is None else device
    h, w = image.shape[-2:]
    if h <= tile and w <= tile:
        return fn(image.to(device), None if mask is None else mask.to(device))
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out: torch.Tensor | None = None
    for y0, (keep_y0, keep_y1) in zip(ys, seams(ys, tile, h)):
        for x0, (keep_x0, keep_x1) in zip(xs, seams(xs, tile, w)):
            window = (..., slice(y0, y0 + tile), slice(x0, x0 + tile))
            result = fn(image[window].to(device), None if mask is None else mask[window].to(device))
            if out is None:
                out = torch.empty(1, result.shape[1], h * scale, w * scale, dtype=result.dtype, device=image.device)
            s = scale
            out[..., keep_y0 * s : keep_y1 * s, keep_x0 * s : keep_x1 * s] = result[
                ..., (keep_y0 - y0) * s : (keep_y1 - y0) * s, (keep_x0 - x0) * s : (keep_x1 - x0) * s
            ].to(image.device)
    return out
