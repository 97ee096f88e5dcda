"""nvJPEG decoding, checked against the CPU decode on real JPEGs, under the conditions that corrupt it.

`transferlab.data.jpeg_batches.decode_batch` decodes ImageFolder batches on the GPU. torchvision's CUDA decoder
writes on a stream of its own; when that stream is not ordered with the caller's, a decode can overwrite
memory that queued kernels still read, or a kernel can read a decode that has not finished (pytorch/vision#9606).
This script decodes many batches of photographs of several sizes while the GPU is kept busy with large kernels
and memory is freed and re-allocated between batches, and compares every decoded image with libjpeg's CPU
decode. The two decoders may differ by a few levels per pixel (different IDCT and upsampling); corruption
differs by far more. Prints one line per round and exits 1 on any mismatch.

    python bench/nvjpeg_check.py            # GPU
    python bench/nvjpeg_check.py --cpu      # the same code path on the CPU (what --dry-run and CI run)
"""

from __future__ import annotations

import argparse
import io
import sys

import numpy as np
import torch
from PIL import Image
from torchvision.io import decode_jpeg

from transferlab.data.jpeg_batches import decode_batch

# nvJPEG and libjpeg-turbo round differently: most pixels are equal, a few differ by up to a handful of levels
# (torchvision's own CUDA decode test allows a mean absolute difference below 2). Corruption (another batch's
# pixels, unfinished writes) moves the mean by tens of levels.
MAX_MEAN_ABS_DIFF = 2.0
MAX_PIXEL_DIFF_FRACTION = 0.01  # at most 1% of pixels differ by more than 16 levels


def photographs() -> list[np.ndarray]:
    """scikit-image's sample photographs (RGB), cropped to several sizes, so batches mix shapes."""
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    sizes = [(480, 640), (333, 500), (256, 256), (375, 300), (199, 301)]
    return [photo[:h, :w] for photo in photos for h, w in sizes if photo.shape[0] >= h and photo.shape[1] >= w]


def encode(photo: np.ndarray, quality: int) -> torch.Tensor:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=quality)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="decode on the CPU (checks the script, not nvJPEG)")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA device. Run on a GPU machine, or pass --cpu to check the script on the CPU")
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    rounds = 2 if args.cpu else args.rounds
    encoded = [encode(photo, quality) for photo in photographs() for quality in (75, 95)]
    expected = [decode_jpeg(data) for data in encoded]
    worst_mean, worst_fraction = 0.0, 0.0
    for round_index in range(rounds):
        if device.type == "cuda":  # keep the device busy and the allocator recycling blocks while decoding
            busy = torch.randn(4096, 4096, device=device)
            for _ in range(4):
                busy = busy @ busy
                busy = busy / busy.norm()
        decoded = decode_batch(encoded, device)
        if device.type == "cuda":
            scratch = [torch.full_like(image, 255) for image in decoded[::2]]  # reuse freed blocks at once
            del scratch
        for index, (image, reference) in enumerate(zip(decoded, expected, strict=True)):
            if image.shape != reference.shape:
                print(
                    f"round {round_index}: image {index} decoded as {tuple(image.shape)}, expected "
                    f"{tuple(reference.shape)}"
                )
                return 1
            diff = (image.cpu().int() - reference.int()).abs()
            mean, fraction = diff.float().mean().item(), (diff > 16).float().mean().item()
            worst_mean, worst_fraction = max(worst_mean, mean), max(worst_fraction, fraction)
            if mean > MAX_MEAN_ABS_DIFF or fraction > MAX_PIXEL_DIFF_FRACTION:
                print(
                    f"round {round_index}: image {index} {tuple(image.shape)} differs from the CPU decode: mean |Δ| "
                    f"{mean:.2f} levels, {100 * fraction:.2f}% of pixels off by > 16"
                )
                return 1
        print(f"round {round_index}: {len(decoded)} images on {device.type} match the CPU decode", flush=True)
    print(
        f"nvjpeg check passed on {device}: worst mean |Δ| {worst_mean:.3f} levels, worst fraction off by > 16: "
        f"{100 * worst_fraction:.3f}% ({rounds} rounds × {len(encoded)} images)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
