"""``model.compile``: torch.compile a module's forward (and so its backward), falling back to eager cleanly.

Compilation happens at the first call, so a model that does not compile only shows it then; instead of
stopping the run with a compiler traceback, the module warns once (naming the mode and the reason) and runs
eagerly. The first compiled call's time (the compilation, mostly) is reported, and inductor's on-disk cache
makes a second run of the same model start much faster.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn


class CompiledOrEager:
    """Call the compiled forward; on a compilation failure, warn once and keep calling the eager one."""

    def __init__(self, forward: Callable[..., Any], mode: str, name: str) -> None:
        self.eager, self.mode, self.name = forward, mode, name
        self.compiled: Callable[..., Any] | None = torch.compile(forward, mode=mode)
        self.first_call_s: float | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        started = time.perf_counter()
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as err:  # dynamo/inductor raise many types; the eager call below re-raises real bugs
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(
                f"model.compile={self.mode}: {self.name} could not be compiled ({type(err).__name__}: {reason}); "
                "running it eagerly. Set model.compile=null to silence this",
                stacklevel=2,
            )
            self.compiled = None
            return self.eager(*args, **kwargs)
        if self.first_call_s is None:
            self.first_call_s = time.perf_counter() - started
            rank_zero_info(f"model.compile={self.mode}: {self.name} compiled in {self.first_call_s:.1f} s")
        return out


def compile_forward(module: nn.Module, mode: str, name: str) -> None:
    """Replace `module`'s forward by a compiled one (in place: parameters and state_dict keys stay as they are)."""
    if not isinstance(module.forward, CompiledOrEager):
        module.forward = CompiledOrEager(module.forward, mode, name)
