"""LR schedules that need the run's length, which only the trainer knows.

Libraries: timm's schedulers are not torch LR schedulers (Lightning would need a custom lr_scheduler_step); this is
torch's LambdaLR with the whole schedule as one function of the step, which resumes from the step count.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05) -> LambdaLR:
    """Linear warm-up for `warmup_fraction` of the steps, then cosine decay to zero; stepped every batch."""
    warmup = max(1, round(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
