"""Lightning's ``DDPStrategy._ddp_kwargs``: the keyword arguments the strategy hands to DistributedDataParallel.

Why: a task must know whether DDP searches for unused parameters (``find_unused_parameters``) to decide whether
a partly frozen model can run; the strategy exposes the arguments only through this attribute.
Without it: `transferlab.tasks.base` could not tell ``strategy=ddp`` from ``ddp_find_unused_parameters_true``.
Checked: pytorch-lightning 2.0–2.6.6, lightning 2.6.6.
"""

from __future__ import annotations

from typing import Any


def ddp_kwargs(strategy: Any) -> dict[str, Any]:
    """The DistributedDataParallel keyword arguments of a DDP `strategy` (empty for another strategy)."""
    return dict(getattr(strategy, "_ddp_kwargs", None) or {})
