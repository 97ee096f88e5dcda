"""Gaussian denoising (sigma 25) on the held-out test photos: the noisy input, scikit-image's wavelet
denoiser, BM3D and a transferlab checkpoint run through the real ``tl-predict`` CLI, as one PSNR table.

    python experiments/denoising/compare.py --ckpt outputs/runs/<date>/<time>/checkpoints/best.ckpt

The test photos are the checkpoint's own test split (its stored ``data`` config rebuilt: same photos, same
fractions, same ``split_seed``), so none of them was trained on or used for model selection. Each photo's
centred ``--crop`` square (BM3D takes ~15 s per 256² RGB crop on a CPU) gets N(0, sigma²) noise drawn with a
fixed seed per photo name, is clipped to [0, 1] and stored as an 8-bit PNG; every method denoises that same
PNG, and every output is clipped and rounded to 8 bits before scoring (as a saved image is). PSNR is RGB,
over all three channels, data range 1, no border cropped. ``--tiny`` (32 px crops) runs in seconds, for tests.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.trust import open_checkpoint
from transferlab.utils.errors import UserError, report_user_errors
from transferlab.utils.extras import require
from transferlab.utils.io import atomic_file

PHOTOS_TARGET = "transferlab.data.photos.PhotoDataModule"
METHODS = ("noisy", "wavelet", "BM3D", "transferlab")
DEFAULT_OUT = Path(__file__).with_name("results.md")
Rows = dict[str, dict[str, float]]  # photo -> method -> PSNR (dB)


# -- the photos and the noise ------------------------------------------------------------------------
def trained_sigma(data: dict) -> float | None:
    """The Gaussian noise level a checkpoint was trained at (None when its degradation is something else)."""
    steps = (data.get("degrade") or {}).get("steps") or []
    sigmas = [step.get("sigma") for step in steps if str(step.get("_target_", "")).endswith(".GaussianNoise")]
    return float(sigmas[0]) if len(steps) == 1 and sigmas else None


def held_out_photos(checkpoint) -> list[tuple[str, np.ndarray]]:
    """(name, uint8 RGB (H, W, 3)) of the checkpoint's held-out test photos, in split order."""
    data = checkpoint.config["data"]
    if data.get("_target_") != PHOTOS_TARGET:
        raise UserError(f"{checkpoint.path} was not trained on data=photos. Train one: tl-train experiment=denoising")
    if "test_fraction" not in data:
        raise UserError(
            f"{checkpoint.path} predates the photos' test split, so its training photos may include the test "
            "photos. Retrain it with tl-train experiment=denoising"
        )
    datamodule = checkpoint.build_datamodule()
    datamodule.setup("test")
    names, photos = datamodule.photo_names["test"], datamodule.split_photos["test"]
    return [(name, photo.permute(1, 2, 0).numpy()) for name, photo in zip(names, photos)]


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centred `size`² square (the whole side where the photo is smaller; 0 = the whole photo)."""
    if size <= 0:
        return image
    h, w = image.shape[:2]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top : top + ch, left : left + cw]


def add_noise(clean: np.ndarray, sigma: float, seed: int, name: str) -> np.ndarray:
    """uint8 clean + N(0, sigma²) (0-255 units), clipped to [0, 1] and rounded to 8 bits; seeded per photo name."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    noisy = np.clip(clean / 255.0 + rng.normal(0.0, sigma / 255.0, clean.shape), 0.0, 1.0)
    return to_uint8(noisy)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def psnr(restored: np.ndarray, clean: np.ndarray) -> float:
    """RGB PSNR in dB (data range 1, all channels, no border crop) of two uint8 images."""
    mse = np.mean((restored.astype(np.float64) / 255.0 - clean.astype(np.float64) / 255.0) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


# -- the methods -------------------------------------------------------------------------------------
def wavelet(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """scikit-image's BayesShrink wavelet denoiser on each RGB channel, told the true sigma."""
    require("the wavelet column of experiments/denoising", "experiments", {"pywt": "PyWavelets"})
    from skimage.restoration import denoise_wavelet

    out = denoise_wavelet(
        noisy / 255.0, sigma=sigma / 255.0, method="BayesShrink", mode="soft", channel_axis=-1, rescale_sigma=True
    )
    return to_uint8(out)


def bm3d_rgb(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """CBM3D (the `bm3d` package's defaults: opponent colour space, 'np' profile), told the true sigma."""
    require("the BM3D column of experiments/denoising", "experiments", {"bm3d": "bm3d"})
    import bm3d

    return to_uint8(bm3d.bm3d_rgb(noisy / 255.0, sigma_psd=sigma / 255.0))


def hydra_value(value: str | Path) -> str:
    """A Hydra override value quoted, so paths with spaces, '=' or ',' pass through unchanged."""
    return "'" + str(value).replace("'", "\\'") + "'"


def tl_predict_command() -> list[str]:
    """The `tl-predict` console script of this interpreter's environment (what a user runs)."""
    script = Path(sys.executable).parent / "tl-predict"
    found = str(script) if script.exists() else shutil.which("tl-predict")
    if found is None:
        raise UserError("tl-predict is not on PATH. Install transferlab (pip install -e .) in this environment")
    return [found]


def transferlab_predict(ckpt: Path, noisy: dict[str, np.ndarray], work: Path, device: str) -> dict[str, np.ndarray]:
    """Denoise every image with ``tl-predict`` in a subprocess: PNGs in, PNGs out (as a user would)."""
    inputs, outputs = work / "noisy", work / "denoised"
    inputs.mkdir(parents=True)
    for file, image in noisy.items():
        Image.fromarray(image).save(inputs / file)
    command = [
        *tl_predict_command(),
        f"ckpt_path={hydra_value(ckpt.resolve())}",
        f"input={hydra_value(inputs)}",
        f"output={hydra_value(outputs)}",
        f"device={device}",
        f"hydra.run.dir={hydra_value(work / 'predict_run')}",
    ]
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"tl-predict failed with exit {result.returncode}: {tail[0]}")
    restored = {}
    for file in noisy:
        with Image.open(outputs / file) as image:  # tl-predict keeps relative paths, always writes .png
            restored[file] = np.asarray(image.convert("RGB"))
    return restored


# -- the table -------------------------------------------------------------------------------------
def markdown(rows: Rows, notes: list[str]) -> str:
    """The per-photo PSNR table with a mean row, then the notes (convention, checkpoint, times)."""
    lines = ["| photo | " + " | ".join(METHODS) + " |", "|---|" + "---:|" * len(METHODS)]
    for name, scores in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{scores[m]:.2f}" for m in METHODS) + " |")
    means = {m: float(np.mean([scores[m] for scores in rows.values()])) for m in METHODS}
    lines.append("| **mean** | " + " | ".join(f"**{means[m]:.2f}**" for m in METHODS) + " |")
    return "\n".join([*lines, "", *(f"- {note}" for note in notes)]) + "\n"


def compare(ckpt: Path, crop: int, sigma: float, seed: int, device: str) -> tuple[Rows, list[str]]:
    """PSNR of every method on every test photo, and the notes that say how it was measured."""
    checkpoint = open_checkpoint(ckpt)
    photos = [(name, centre_crop(photo, crop)) for name, photo in held_out_photos(checkpoint)]
    files = {name: f"{index:02d}.png" for index, (name, _) in enumerate(photos)}
    clean = {name: photo for name, photo in photos}
    noisy = {name: add_noise(photo, sigma, seed, name) for name, photo in photos}
    outputs: dict[str, dict[str, np.ndarray]] = {"noisy": noisy}
    seconds: dict[str, float] = {}

    def timed(method: str, fn: Callable[[np.ndarray, float], np.ndarray]) -> None:
        started = time.perf_counter()
        outputs[method] = {name: fn(image, sigma) for name, image in noisy.items()}
        seconds[method] = time.perf_counter() - started

    timed("wavelet", wavelet)
    timed("BM3D", bm3d_rgb)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tl-denoise-") as work:
        by_file = transferlab_predict(ckpt, {files[n]: image for n, image in noisy.items()}, Path(work), device)
    outputs["transferlab"] = {name: by_file[files[name]] for name in noisy}
    seconds["transferlab"] = time.perf_counter() - started

    rows = {name: {m: psnr(outputs[m][name], clean[name]) for m in METHODS} for name in clean}
    sizes = sorted({f"{image.shape[1]}×{image.shape[0]}" for image in clean.values()})
    trained = trained_sigma(checkpoint.config["data"])
    split = checkpoint.config["data"]
    gap = np.mean([r["transferlab"] - r["BM3D"] for r in rows.values()])
    notes = [
        f"sigma = {sigma:g} (0–255 units), noise seed {seed} per photo name; "
        f"{'centred ' + str(crop) + ' px crops' if crop > 0 else 'whole photos'} ({', '.join(sizes)} px).",
        "PSNR in dB, RGB over all 3 channels, data range 1, crop_border 0. Every method denoises the same 8-bit "
        "noisy PNG (clipped to [0, 1]); every output is clipped and rounded to 8 bits before scoring. "
        "wavelet = skimage `denoise_wavelet` (per RGB channel, BayesShrink, soft, sigma given); "
        "BM3D = `bm3d.bm3d_rgb(noisy, sigma_psd=sigma/255)`; transferlab = `tl-predict` on the checkpoint.",
        f"Test photos: the checkpoint's held-out test split (data.test_fraction={split.get('test_fraction')}, "
        f"data.split_seed={split.get('split_seed')}); checkpoint `{ckpt}`, trained at sigma "
        f"{f'{trained:g}' if trained is not None else 'unknown (not a single Gaussian noise step)'}.",
        f"transferlab − BM3D: {gap:+.2f} dB (mean over photos).",
        "Wall time (s): " + ", ".join(f"{m} {seconds[m]:.1f}" for m in METHODS[1:]) + " (tl-predict includes its "
        "process start-up).",
    ]
    if trained is not None and trained != sigma:
        notes.append(f"**Warning:** the model was trained at sigma {trained:g}, not {sigma:g}.")
    return rows, notes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="a best.ckpt of tl-train experiment=denoising")
    parser.add_argument("--crop", type=int, default=None, help="centred crop side in px (0 = whole photo; 256)")
    parser.add_argument("--sigma", type=float, default=25.0, help="noise std in 0-255 units (default 25)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--device", default="cpu", help="tl-predict device: cpu | cuda | auto")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown table (default {DEFAULT_OUT})")
    parser.add_argument("--tiny", action="store_true", help="32 px crops: seconds, for a smoke test")
    args = parser.parse_args(argv)
    if args.crop is None:
        args.crop = 32 if args.tiny else 256
    return args


@report_user_errors
def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if not args.ckpt.is_file():
        raise UserError(f"checkpoint {args.ckpt} does not exist. Pass --ckpt <run dir>/checkpoints/best.ckpt")
    rows, notes = compare(args.ckpt, args.crop, args.sigma, args.seed, args.device)
    title = f"# Denoising at sigma {args.sigma:g} on the held-out test photos\n\n"
    text = title + markdown(rows, notes)
    print(text, flush=True)
    with atomic_file(args.out) as tmp:
        tmp.write_text(text)
    print(f"Wrote {args.out}", flush=True)
    return args.out


if __name__ == "__main__":
    main()
