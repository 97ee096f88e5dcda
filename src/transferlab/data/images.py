"""Image files → uint8 RGB tensors, one decoder for every task, and what a run does with a file it cannot read.

Every mode PIL opens becomes 8-bit RGB the same way wherever a file is read (training folders, photos,
``tl-predict``): grey is repeated, palette and CMYK converted, transparency composited on white, 16-bit and
32-bit integer images scaled down from their range (PIL's own conversion would clip them to white).
A file that cannot be decoded (zero bytes, truncated, not an image) raises `UnreadableImage`; a training
run either stops on it or skips it (`BadFiles`, ``data.on_bad_file``).

Libraries: torchvision.io.decode_image reads JPEG/PNG/WebP/GIF straight to tensors, but not every mode PIL opens
(CMYK, 16-bit, palette with transparency, TIFF, BMP), and a file must decode the same way everywhere; GPU batches of
JPEGs do use torchvision's nvJPEG (jpeg_batches.py).
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from transferlab.constants import IMAGE_EXTENSIONS
from transferlab.utils.errors import UserError
from transferlab.utils.io import WriteFailed, create_atomic

BAD_FILE_POLICIES = ("skip", "error")
_WIDE_MODES = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def image_files(root: Path) -> list[Path]:
    """Every image file under `root` (recursively), in a stable order; possibly none."""
    return sorted(p for p in root.rglob("*") if is_image_file(p))


class UnreadableImage(UserError):
    """An image file that cannot be decoded; `path` and `reason` say which and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot read image {path} ({reason}). Remove or replace the file")


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` (any PIL mode) as 8-bit RGB, transparency composited on white."""
    if image.mode in _WIDE_MODES or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        top = _WIDE_MODES.get(image.mode) or (1.0 if values.max(initial=0.0) <= 1.0 else 255.0)
        if image.mode == "I" and values.max(initial=0.0) <= 255:  # 8-bit data stored as 32-bit integers
            top = 255
        image = Image.fromarray(np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def decode_rgb(path: str | Path) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor (3, H, W); `UnreadableImage` when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.load()
            rgb = to_rgb(image)
    except FileNotFoundError:
        raise UserError(f"image file {path} does not exist. Check the path") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UnreadableImage(path, str(err).splitlines()[0] if str(err).strip() else type(err).__name__) from None
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def warn_skipped(err: UnreadableImage) -> None:
    """The one warning line for a skipped unreadable file (training, evaluation and tl-predict say it alike)."""
    print(f"warning: skipped unreadable image {err.path} ({err.reason})", file=sys.stderr, flush=True)


class BadFiles:
    """What a run does with an unreadable file: stop (``error``) or skip it with one warning (``skip``).

    Skipped files are recorded as marker files in `folder`, created exclusively and whole, so each file is warned
    about once even when several DataLoader workers or DDP ranks meet it, and the run can list them all
    in ``metrics.json``. The runner points `folder` into the run directory; without it (a datamodule used
    from Python) a temporary folder is made, before any worker starts, and removed with this object.
    """

    def __init__(self, policy: str = "skip", folder: Path | None = None) -> None:
        if policy not in BAD_FILE_POLICIES:
            raise UserError(f"data.on_bad_file must be one of {', '.join(BAD_FILE_POLICIES)}, got '{policy}'")
        self.policy = policy
        self.folder = folder
        self._temporary: tempfile.TemporaryDirectory | None = None

    def __getstate__(self) -> dict[str, Any]:  # worker processes share the folder, not its owner
        return {**self.__dict__, "_temporary": None}

    def handle(self, err: UnreadableImage) -> None:
        """Raise for ``error``; for ``skip`` record the file (warning the first time it is seen)."""
        if self.policy == "error":
            raise UserError(f"{err}, or set data.on_bad_file=skip to train without it") from None
        marker = self.ready_folder() / hashlib.sha1(err.path.encode()).hexdigest()[:20]
        try:
            created = create_atomic(marker, f"{err.path}\t{err.reason}\n".encode())  # False: another was first
        except WriteFailed as failed:  # in a DataLoader worker: torch rebuilds an exception from its message alone
            raise UserError(str(failed)) from None
        if created:
            warn_skipped(err)

    def ready_folder(self) -> Path:
        """The record folder, a temporary one if none was set (call before DataLoader workers start)."""
        if self.folder is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="transferlab-skipped-")
            self.folder = Path(self._temporary.name)
        return self.folder

    def skipped(self) -> list[dict[str, str]]:
        """Every file skipped so far (by any process), sorted by path."""
        if self.folder is None or not self.folder.is_dir():
            return []
        markers = (marker for marker in self.folder.iterdir() if not marker.name.startswith("."))  # not a temporary
        entries = [marker.read_text().rstrip("\n").split("\t", 1) for marker in markers]
        return sorted(({"path": path, "reason": reason} for path, reason in entries), key=lambda e: e["path"])


class SkippingLoader:
    """A torchvision ``ImageFolder`` loader: the decoded image, or None for a skipped unreadable file."""

    def __init__(self, bad_files: BadFiles) -> None:
        self.bad_files = bad_files

    def __call__(self, path: str) -> torch.Tensor | None:
        try:
            return decode_rgb(path)
        except UnreadableImage as err:
            self.bad_files.handle(err)
            return None
