"""Whether a dataset may live on the training GPU: the size check before the device-resident path uploads it.

``data.on_gpu=null`` (auto) keeps in-memory data and photos on the GPU only when they take at most
`DEVICE_DATA_SHARE` of the device memory free when the first loader is made (after the model is on the device,
before optimizer state, activations, CUDA-graph pools and DDP buckets exist — they need the rest); otherwise
batches come through the CPU DataLoader, with one warning saying so. ``data.on_gpu=true`` uploads whatever
fits in the free memory and refuses, in one line, what cannot. Host "devices" (the CPU in tests) are not checked.
"""

from __future__ import annotations

import torch
from pytorch_lightning.utilities import rank_zero_warn

from transferlab.utils.errors import UserError

DEVICE_DATA_SHARE = 0.25


def free_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA `device` (the driver's count: other processes' use is subtracted); None elsewhere."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def keep_on_device(nbytes: int, device: torch.device, forced: bool, what: str) -> bool:
    """Whether `what` (`nbytes` once uploaded) goes on `device`; `forced`: the user set ``data.on_gpu=true``."""
    free = free_memory(device)
    if free is None:
        return True
    if forced:
        if nbytes > free:
            raise UserError(
                f"data.on_gpu=true: {what} takes {gib(nbytes)} but {device} has only {gib(free)} free. "
                "Set data.on_gpu=null (auto) or false to stream batches from host memory"
            )
        return True
    if nbytes <= DEVICE_DATA_SHARE * free:
        return True
    rank_zero_warn(
        f"data.on_gpu=null (auto): {what} takes {gib(nbytes)}, more than {DEVICE_DATA_SHARE:.0%} of the "
        f"{gib(free)} free on {device}, so batches come through the CPU DataLoader. "
        "Set data.on_gpu=true to keep it on the GPU anyway"
    )
    return False
