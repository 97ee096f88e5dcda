"""`tl-predict ckpt_path=… input=…`: run a trained checkpoint, or the ONNX model `tl-export` wrote from one, on
image files.

The task in the checkpoint says what its outputs are (`transferlab.inference`): a classifier writes
``predictions.csv`` (file, then class/probability for the top ``top_k``; ``batch_size`` files per forward
pass), a stylizer or restorer one PNG per input (same relative path, ``.png``, any image size, tiled). Each
file is prepared exactly as the run's test images were (the datamodule's `file_transform`, rebuilt from the
checkpoint's stored config). An ``.onnx`` file carries that config and what else prediction needs, and runs
through the same preparation and outputs on onnxruntime (`transferlab.exported`).

An input that cannot be decoded (corrupt or truncated, not an image) is skipped with one warning line, as training
skips it (``on_bad_file=skip``, the default): the others are predicted, and the skipped ones are listed at the end
of the output and in ``skipped_files.json`` next to the results. ``on_bad_file=error`` refuses the whole input
before any work instead; with no readable input at all there is nothing to do, which is an error either way.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from transferlab import api
from transferlab.api import callable_module
from transferlab.cli import hydra_app
from transferlab.constants import IMAGE_EXTENSIONS, PREDICT_SKIPPED_FILE
from transferlab.data.images import UnreadableImage, decode_rgb, image_files, warn_skipped
from transferlab.exported import ONNX_SUFFIX, OnnxModel
from transferlab.inference import ELSEWHERE, PredictOptions, Predictor, check_tiling
from transferlab.runner import output_dir
from transferlab.trust import open_checkpoint
from transferlab.utils.errors import UserError
from transferlab.utils.io import write_json_atomic
from transferlab.utils.threads import configure_cpu


def input_files(source: Path) -> tuple[Path, list[Path]]:
    """The root and the image files to process: `source` itself, or every image under the folder."""
    if source.is_file():
        return source.parent, [source]
    if source.is_dir():
        files = image_files(source)
        if not files:
            raise UserError(f"no image files in {source} (extensions {', '.join(IMAGE_EXTENSIONS)})")
        return source, files
    raise UserError(f"input {source} does not exist. Pass input=<image file or folder>")


def check_readable(files: list[Path]) -> None:
    """``on_bad_file=error``: fail before any work on a file that is not an image (reads headers only)."""
    for path in files:
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise UserError(
                f"cannot read image {path} ({err}). Remove it from the input or replace it, or set on_bad_file=skip "
                "to predict the others"
            ) from err


def predict_files(predictor: Predictor, root: Path, files: list[Path], policy: str) -> list[UnreadableImage]:
    """Give `predictor` every file that decodes; the unreadable ones, each warned about (``skip``), are returned.

    ``error`` stops at the first unreadable file (one the header check let through: a truncated JPEG)."""
    skipped: list[UnreadableImage] = []
    for path in files:
        try:
            image = decode_rgb(path)
        except UnreadableImage as err:
            if policy == "error":
                raise UserError(f"{err}, or set on_bad_file=skip to predict the others") from None
            warn_skipped(err)
            skipped.append(err)
            continue
        predictor.add(image, path.relative_to(root))
    if skipped and len(skipped) == len(files):
        first = skipped[0]
        if len(files) == 1:
            raise first  # its own message: which file, why, what to do
        raise UserError(
            f"none of the {len(files)} input images can be read (each is named in a warning above; the first, "
            f"{first.path}: {first.reason}). Check input=<an image file or folder>"
        )
    return skipped


def record_skipped(output: Path, skipped: list[UnreadableImage]) -> str:
    """List the skipped inputs in ``<output>/skipped_files.json`` (an earlier run's list there goes) and return the
    lines that end the console output; '' when none was skipped."""
    path = output / PREDICT_SKIPPED_FILE
    if not skipped:
        path.unlink(missing_ok=True)  # a list from an earlier run into the same folder would be wrong now
        return ""
    write_json_atomic(path, [{"path": err.path, "reason": err.reason} for err in skipped], elsewhere=ELSEWHERE)
    lines = [f"Skipped {len(skipped)} unreadable input(s), listed in {path}:"]
    return "\n".join([*lines, *(f"  {err.path} ({err.reason})" for err in skipped)])


def build_predictor(cfg: DictConfig, options: PredictOptions) -> Predictor:
    """The predictor of the model at ``ckpt_path``: a checkpoint's task, or an exported ONNX model."""
    path = Path(cfg.ckpt_path).expanduser()
    if path.suffix == ONNX_SUFFIX:
        model = OnnxModel.open(path, cfg.trusted_targets, cfg.device)  # its data config checked before any use
        return model.predictor(model.file_transform(), options)
    checkpoint = open_checkpoint(path, cfg.trusted_targets)  # checked before any use
    device = torch.device(
        "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device.replace("auto", "cpu")
    )
    task = checkpoint.build_task().eval().to(device)
    return task.predictor(checkpoint.build_datamodule(task.preprocessing).file_transform(), options)


def run(cfg: DictConfig) -> Path:
    check_tiling(cfg.tile, cfg.overlap)
    configure_cpu(cfg.get("cpu_threads"))  # as for training (transferlab.utils.threads)
    options = PredictOptions(
        output=Path(cfg.output).expanduser() if cfg.output else output_dir() / "predictions",
        top_k=cfg.top_k,
        batch_size=cfg.batch_size,
        tile=cfg.tile,
        overlap=cfg.overlap,
        style=None if cfg.style is None else str(cfg.style),
        mask=None if cfg.mask is None else Path(cfg.mask).expanduser(),
    )
    root, files = input_files(Path(cfg.input).expanduser())
    policy = cfg.get("on_bad_file", "skip")
    if policy == "error":
        check_readable(files)
    predictor = build_predictor(cfg, options)
    skipped = predict_files(predictor, root, files, policy)
    print(predictor.finish(), flush=True)
    if listed := record_skipped(options.output, skipped):
        print(listed, flush=True)
    return options.output


@hydra_app("predict")
def main(cfg: DictConfig) -> Path:
    return run(cfg)


callable_module(__name__, api.predict)  # `transferlab.predict([...])`: the Python API


if __name__ == "__main__":
    main()
