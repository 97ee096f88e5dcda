"""`tl-predict ckpt_path=… input=…`: run a trained checkpoint, or the ONNX model `tl-export` wrote from one, on
image files.

The task in the checkpoint says what its outputs are (`transferlab.inference`): a classifier writes
``predictions.csv`` (file, then class/probability for the top ``top_k``; ``batch_size`` files per forward
pass), a stylizer or restorer one PNG per input (same relative path, ``.png``, any image size, tiled). Each
file is prepared exactly as the run's test images were (the datamodule's `file_transform`, rebuilt from the
checkpoint's stored config). An ``.onnx`` file carries that config and what else prediction needs, and runs
through the same preparation and outputs on onnxruntime (`transferlab.exported`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from transferlab import api
from transferlab.api import callable_module
from transferlab.cli import hydra_app
from transferlab.constants import IMAGE_EXTENSIONS
from transferlab.data.images import decode_rgb, image_files
from transferlab.exported import ONNX_SUFFIX, OnnxModel
from transferlab.inference import PredictOptions, Predictor, check_tiling
from transferlab.runner import output_dir
from transferlab.trust import open_checkpoint
from transferlab.utils.errors import UserError
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
    """Fail before any work on a file that is not an image (reads headers only)."""
    for path in files:
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise UserError(f"cannot read image {path} ({err}). Remove it from the input or replace it") from err


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
    return task.predictor(checkpoint.build_datamodule().file_transform(), options)


def run(cfg: DictConfig) -> Path:
    check_tiling(cfg.tile, cfg.overlap)
    configure_cpu(cfg.get("cpu_threads"))  # the free cores, as for training (transferlab.utils.threads)
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
    check_readable(files)
    predictor = build_predictor(cfg, options)
    for path in files:
        predictor.add(decode_rgb(path), path.relative_to(root))
    print(predictor.finish(), flush=True)
    return options.output


@hydra_app("predict")
def main(cfg: DictConfig) -> Path:
    return run(cfg)


callable_module(__name__, api.predict)  # `transferlab.predict([...])`: the Python API


if __name__ == "__main__":
    main()
