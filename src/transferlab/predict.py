"""`tl-predict ckpt_path=… input=…`: classify, stylize or restore image files with a trained checkpoint.

* classification → ``predictions.csv`` (file, then class/probability for the top ``top_k``);
* style transfer and restoration → one PNG per input (same relative path, ``.png``), any image size.

Images larger than ``tile`` are processed in tiles that overlap by ``overlap`` pixels; each output pixel
comes from the tile where it lies farthest from a tile border (seams at the middle of each overlap), so
for a network whose receptive field reaches at most ``overlap / 2`` pixels the result is identical to
processing the whole image at once, while memory stays bounded by the tile size (a 4000×3000 photo runs on
a CPU). Outputs are written to a temporary file and renamed, so a crash never leaves a truncated image.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.io import encode_png

from transferlab import api
from transferlab.api import callable_module
from transferlab.cli import hydra_app
from transferlab.data.photos import load_image, load_photo
from transferlab.runner import output_dir
from transferlab.tasks.classification import ClassificationTask
from transferlab.tasks.style_transfer import StyleTransferTask, square
from transferlab.trust import open_checkpoint
from transferlab.utils.errors import UserError
from transferlab.utils.io import atomic_file

ImageFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


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


# -- files -----------------------------------------------------------------------------------------
def input_files(source: Path) -> tuple[Path, list[Path]]:
    """The root and the image files to process: `source` itself, or every image under the folder."""
    if source.is_file():
        return source.parent, [source]
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise UserError(f"no image files in {source} (extensions {', '.join(IMG_EXTENSIONS)})")
        return source, files
    raise UserError(f"input {source} does not exist. Pass input=<image file or folder>")


def check_readable(files: list[Path]) -> None:
    """Fail before any work on a file that is not an image (reads headers only)."""
    for path in files:
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise UserError(f"cannot read image {path} ({err}). Remove it from the input or replace it") from err


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the whole file or none."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


# -- tasks -----------------------------------------------------------------------------------------
def classify(task: ClassificationTask, files: list[Path], root: Path, prepare: Callable, top_k: int) -> bytes:
    """CSV rows: file, then (class, probability) for the `top_k` most probable classes; `prepare` makes a
    decoded file into an input as the training data's test images were made (`file_transform`)."""
    k = min(top_k, len(task.class_names))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", *[f"{kind}_{i}" for i in range(1, k + 1) for kind in ("class", "prob")]])
    for path in files:
        image = prepare(load_photo(path))
        with torch.inference_mode():
            probs = task(image[None].to(task.device)).softmax(dim=-1)[0]
        top = probs.topk(k)
        pairs = [
            v for i, p in zip(top.indices.tolist(), top.values.tolist()) for v in (task.class_names[i], f"{p:.6f}")
        ]
        writer.writerow([str(path.relative_to(root)), *pairs])
    return buffer.getvalue().encode()


def image_function(task: torch.nn.Module, cfg: DictConfig) -> tuple[ImageFn, torch.Tensor | None]:
    """The per-tile function of a stylizer/restorer, and the mask (inpainting) if one was given."""
    if isinstance(task, StyleTransferTask):
        style = None
        if cfg.style is not None:
            if task.method != "adain":
                raise UserError("style= needs an AdaIN model; a Johnson stylizer has its style built in")
            style = square(load_image(str(cfg.style)), task.hparams.style_size)[None].float().div(255)
            style = style.to(task.device)
        return (lambda x, _mask: task.stylize(x, style)), None
    mask = None
    if getattr(task, "mask_channel", False):
        if cfg.mask is None:
            raise UserError("this is an inpainting model: pass mask=<image file, white = missing>")
        mask = (load_photo(Path(cfg.mask).expanduser())[:1] > 127).float()[None].to(task.device)
    return task.restore, mask


def run(cfg: DictConfig) -> Path:
    check_tiling(cfg.tile, cfg.overlap)
    ckpt_path = Path(cfg.ckpt_path).expanduser()
    checkpoint = open_checkpoint(ckpt_path, cfg.trusted_targets)  # checked before anything is built from it
    root, files = input_files(Path(cfg.input).expanduser())
    check_readable(files)
    device = torch.device(
        "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device.replace("auto", "cpu")
    )
    task = checkpoint.build_task().eval().to(device)
    out = Path(cfg.output).expanduser() if cfg.output else output_dir() / "predictions"

    if isinstance(task, ClassificationTask):
        prepare = checkpoint.build_datamodule().file_transform()
        write_atomic(out / "predictions.csv", classify(task, files, root, prepare, cfg.top_k))
        print(f"Predictions: {out / 'predictions.csv'}", flush=True)
        return out
    fn, mask = image_function(task, cfg)
    for path in files:
        image = load_photo(path)[None].to(device).float() / 255
        if mask is not None and mask.shape[-2:] != image.shape[-2:]:
            raise UserError(
                f"mask is {tuple(mask.shape[-2:])} but {path} is {tuple(image.shape[-2:])}; sizes must match"
            )
        result = tiled(fn, image, cfg.tile, cfg.overlap, task.output_scale, mask)
        target = out / path.relative_to(root).with_suffix(".png")
        write_atomic(target, encode_png(to_uint8(result[0]).cpu()).numpy().tobytes())
    print(f"Wrote {len(files)} image(s) to {out}", flush=True)
    return out


@hydra_app("predict")
def main(cfg: DictConfig) -> Path:
    return run(cfg)


callable_module(__name__, api.predict)  # `transferlab.predict([...])`: the Python API


if __name__ == "__main__":
    main()
