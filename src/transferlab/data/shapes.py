"""`shapes`: a procedurally generated, seeded, learnable 10-class image dataset that needs no network.

Each image shows one filled shape on a textured background. Class identity lives only in the
silhouette; position, scale, rotation, colours, background texture and pixel noise vary per image, so a
model has to learn shape, not colour. Any resolution works (32 px CIFAR-like, 224 px ImageNet-like).
Images are rendered at 2× and box-filtered down, which anti-aliases edges.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferlab.data.base import ClassificationDataModule, TensorImageDataset
from transferlab.utils.io import atomic_open

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]

# Each mask takes shape-local coordinates (u, v) in [-1, 1] (already rotated/scaled) and returns a bool map.


def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u**2 + v**2 <= 1.0


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u**2 + v**2
    return (r2 <= 1.0) & (r2 >= 0.45)


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)


def _frame(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    inner = (np.abs(u) <= 0.45) & (np.abs(v) <= 0.45)
    return _square(u, v) & ~inner


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (v <= 0.7) & (v >= 1.9 * np.abs(u) - 1.0)  # apex at v = -1, base at v = 0.7


def _plus(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    arm = 0.3
    return ((np.abs(u) <= arm) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= arm) & (np.abs(u) <= 1.0))


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    angle = np.arctan2(v, u)
    radius = 0.45 + 0.55 * (np.cos(5 * angle) * 0.5 + 0.5) ** 2
    return np.sqrt(u**2 + v**2) <= radius


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _disc(u, v) & ~((u - 0.45) ** 2 + v**2 <= 0.75)


def _half_disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _disc(u, v) & (v >= 0.0)


def _bars(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 0.9) & ((np.abs(v - 0.5) <= 0.22) | (np.abs(v + 0.5) <= 0.22))


SHAPES: dict[str, Mask] = {
    "disc": _disc,
    "ring": _ring,
    "square": _square,
    "frame": _frame,
    "triangle": _triangle,
    "plus": _plus,
    "star": _star,
    "crescent": _crescent,
    "half_disc": _half_disc,
    "bars": _bars,
}
CLASSES: list[str] = list(SHAPES)


def _texture(params: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Low-frequency backgrounds: a random mix of stripes and smooth gradients, in [0, 1], (n, size, size)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta, freq, phase = params["theta"], params["freq"], params["phase"]
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + phase)
    gradient = x * params["gx"] + y * params["gy"]
    mix = params["mix"]
    tex = mix * stripes + (1 - mix) * (gradient - gradient.min(axis=(1, 2), keepdims=True))
    return np.clip(tex, 0, 1)


def _draw(rng: np.random.Generator, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, shape).astype(np.float32)


def generate(
    num_images: int, image_size: int = 32, seed: int = 0, chunk: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render `num_images` balanced images: uint8 (N, 3, H, W) and int64 labels, fully determined by `seed`.

    Every random draw happens up front (so the images do not depend on `chunk`); the pixels are then rendered
    `chunk` images at a time in float32, which keeps the working set in cache (64 px: 25 s → ~2 s for 4000).
    """
    if num_images < 1 or image_size < 8:
        raise ValueError("need num_images >= 1 and image_size >= 8")
    rng = np.random.default_rng(seed)
    n = num_images
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    scale = _draw(rng, (n, 1, 1), 0.35, 0.75)
    cx = _draw(rng, (n, 1, 1), -1, 1) * (0.95 - scale)
    cy = _draw(rng, (n, 1, 1), -1, 1) * (0.95 - scale)
    rot = _draw(rng, (n, 1, 1), 0, 2 * np.pi)
    background_rgb = _draw(rng, (n, 3, 1, 1), 0, 1)
    foreground_rgb = _draw(rng, (n, 3, 1, 1), 0, 1)
    # Keep the shape visible: push the foreground away from the background's brightness.
    brightness_gap = foreground_rgb.mean(1, keepdims=True) - background_rgb.mean(1, keepdims=True)
    foreground_rgb = np.clip(foreground_rgb + np.sign(brightness_gap + 1e-6) * 0.35, 0, 1)
    texture = {
        "theta": _draw(rng, (n, 1, 1), 0, np.pi),
        "freq": _draw(rng, (n, 1, 1), 1.0, 6.0),
        "phase": _draw(rng, (n, 1, 1), 0, 2 * np.pi),
        "gx": _draw(rng, (n, 1, 1), -1, 1),
        "gy": _draw(rng, (n, 1, 1), -1, 1),
        "mix": _draw(rng, (n, 1, 1), 0, 1),
    }
    noise_seed = int(rng.integers(2**63))

    hi = 2 * image_size  # render at 2x, then box-filter down
    grid = (np.mgrid[0:hi, 0:hi].astype(np.float32) + 0.5) / hi * 2 - 1  # (2, hi, hi) in [-1, 1]
    gy, gx = grid[0][None], grid[1][None]
    pixels = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    noise_rng = np.random.default_rng(noise_seed)
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        dx, dy = (gx - cx[part]) / scale[part], (gy - cy[part]) / scale[part]
        cos, sin = np.cos(rot[part]), np.sin(rot[part])
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos
        mask = np.zeros(u.shape, dtype=np.float32)
        for index, shape in enumerate(SHAPES.values()):
            chosen = labels[part] == index
            mask[chosen] = shape(u[chosen], v[chosen])
        background = (
            background_rgb[part] * (0.6 + 0.4 * _texture({k: t[part] for k, t in texture.items()}, hi))[:, None]
        )
        image = mask[:, None] * foreground_rgb[part] + (1 - mask[:, None]) * background
        image = (image[..., ::2, ::2] + image[..., 1::2, ::2] + image[..., ::2, 1::2] + image[..., 1::2, 1::2]) / 4
        image += noise_rng.standard_normal(image.shape, dtype=np.float32) * 0.04
        pixels[part] = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return torch.from_numpy(pixels), torch.from_numpy(labels.astype(np.int64))


def export_imagefolder(
    root: str | Path, image_size: int = 64, train_per_class: int = 50, val_per_class: int = 10, seed: int = 0
) -> Path:
    """Write shapes as an ImageNet-style folder (``train/<class>/*.png``, ``val/<class>/*.png``).

    This lets the real ImageFolder code path run offline, on the same data the in-memory module uses.
    """
    from PIL import Image

    root = Path(root)
    for split, per_class, split_seed in (("train", train_per_class, seed), ("val", val_per_class, seed + 1)):
        images, labels = generate(per_class * len(CLASSES), image_size, split_seed)
        for i, (image, label) in enumerate(zip(images, labels.tolist())):
            with atomic_open(root / split / CLASSES[label] / f"{i:06d}.png", elsewhere="a root on another disk") as out:
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(out, format="PNG")
    return root


class ShapesDataModule(ClassificationDataModule):
    """The embedded offline dataset: `train_size` training and `test_size` test images, generated in memory.

    Train and test are rendered from different seeds (derived from `seed`), so they never share an image.
    """

    def __init__(self, train_size: int, test_size: int, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sizes = {"train": train_size, "test": test_size}
        self.seeds = {"train": seed, "test": seed + 10_000}

    def load_split(self, split: str) -> TensorImageDataset:
        images, labels = generate(self.sizes[split], self.image_size, self.seeds[split])
        return TensorImageDataset(images, labels, CLASSES)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Export the embedded shapes dataset as an image folder.")
    parser.add_argument("root", help="output folder; gets train/<class>/ and val/<class>/")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-per-class", type=int, default=50)
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = export_imagefolder(args.root, args.image_size, args.train_per_class, args.val_per_class, args.seed)
    print(f"wrote {out}/train and {out}/val")


if __name__ == "__main__":
    main()
