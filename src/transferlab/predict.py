"""`tl-predict ckpt_path=… input=…`: run a trained checkpoint on image files.

The task in the checkpoint says what its outputs are (`transferlab.inference`): a classifier writes
``predictions.csv`` (file, then class/probability for the top ``top_k``), a stylizer or restorer one PNG per
input (same relative path, ``.png``, any image size, tiled). Each file is prepared exactly as the run's test
images were (the datamodule's `file_transform`, rebuilt from the checkpoint's stored config).
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
from transferlab.inference import PredictOptions, check_tiling
from transferlab.runner import output_dir
from transferlab.trust import open_checkpoint
from transferlab.utils.errors import UserError


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


def run(cfg: DictConfig) -> Path:
    check_tiling(cfg.tile, cfg.overlap)
    checkpoint = open_checkpoint(Path(cfg.ckpt_path).expanduser(), cfg.trusted_targets)  # checked before any use
    root, files = input_files(Path(cfg.input).expanduser())
    check_readable(files)
    device = torch.device(
        "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device.replace("auto", "cpu")
    )
    task = checkpoint.build_task().eval().to(device)
    options = PredictOptions(
        output=Path(cfg.output).expanduser() if cfg.output else output_dir() / "predictions",
        top_k=cfg.top_k,
        tile=cfg.tile,
        overlap=cfg.overlap,
        style=None if cfg.style is None else str(cfg.style),
        mask=None if cfg.mask is None else Path(cfg.mask).expanduser(),
    )
    predictor = task.predictor(checkpoint.build_datamodule().file_transform(), options)
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
