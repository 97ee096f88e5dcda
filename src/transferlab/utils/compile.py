"""``model.compile``: torch.compile a module's forward (and so its backward), falling back to eager cleanly.

Compilation happens at the first call, so a model that does not compile only shows it then. Only a genuine
compilation failure — one of dynamo's own exceptions (`torch._dynamo.exc.TorchDynamoException`; inductor's
`InductorError` and every `BackendCompilerFailed` are subclasses, on torch 2.11 as on 2.14) — sends the module
to eager: if the eager call works, the module warns once (naming the mode and the reason) and stays eager; if it
fails too, the failure was the model's (dynamo meets a shape mismatch while tracing, for example), and the eager
error is raised as itself, without a warning. Every other error of a compiled call (out of memory, a CUDA-graphs
"overwritten" access, a bug in the model) is raised as it is: retrying eagerly would hide it or fail the same way.
The first compiled call's time (the compilation, mostly) is reported, and inductor's on-disk cache makes a
second run of the same model start much faster.

CUDA graphs (``reduce-overhead``, ``max-autotune``, on a GPU): inductor's cudagraph trees let a compiled call
start a new *generation* whenever no forward awaits its backward, and a new generation may reuse the memory of
every earlier output. A no-grad step that chains compiled calls (the stylizer, then the loss network on its
output; AdaIN's two loss-network calls) would then read overwritten outputs. `cudagraph_step_begin`, called at
the start of each step, makes step boundaries the only generation boundaries (torch's
`torch.compiler.cudagraph_mark_step_begin`): every output of a step stays valid until the next step begins, and
what is kept longer (the validation image grid) must be cloned by whoever keeps it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from transferlab.constants import CUDA_GRAPH_COMPILE_MODES


def uses_cuda_graphs(mode: str | None) -> bool:
    """Whether compile `mode` replays CUDA graphs on a GPU (its outputs then live in a reused memory pool)."""
    return mode in CUDA_GRAPH_COMPILE_MODES


def cudagraph_step_begin(mode: str | None) -> None:
    """Start a new CUDA-graphs generation under a CUDA-graph `mode`: outputs of earlier steps may now be reused.

    A counter decrement on the host (no device work), so it is free to call at every step, on CPUs too."""
    if uses_cuda_graphs(mode):
        torch.compiler.cudagraph_mark_step_begin()


def is_compile_failure(err: BaseException) -> bool:
    """Whether `err` comes from the compiler (dynamo or a backend such as inductor), not from running the model."""
    from transferlab.upstream.torch_dynamo import is_dynamo_error

    return is_dynamo_error(err)


def failure_reason(err: BaseException) -> str:
    """One line naming a compilation failure: the backend's own exception where dynamo wrapped one (its message
    starts with a bare ``backend='inductor' raised:``)."""
    inner = getattr(err, "inner_exception", None)
    source = inner if isinstance(inner, BaseException) else err
    text = str(source).strip()
    return f"{type(source).__name__}: {text.splitlines()[0]}" if text else type(source).__name__


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
        except Exception as err:
            if not is_compile_failure(err):
                raise  # a runtime error of the model or the device: it is no compiler's fault
            return self._eager_instead(err, *args, **kwargs)
        if self.first_call_s is None:
            self.first_call_s = time.perf_counter() - started
            rank_zero_info(f"model.compile={self.mode}: {self.name} compiled in {self.first_call_s:.1f} s")
        return out

    def _eager_instead(self, err: Exception, *args: Any, **kwargs: Any) -> Any:
        """The eager result after compilation failed with `err`; an eager error is the model's own, raised as is."""
        try:
            out = self.eager(*args, **kwargs)
        except Exception as eager_err:
            raise eager_err from None  # not chained to the compiler's report of the same bug
        warnings.warn(
            f"model.compile={self.mode}: {self.name} could not be compiled ({failure_reason(err)}); "
            "running it eagerly. Set model.compile=null to silence this",
            stacklevel=3,
        )
        self.compiled = None
        return out


def compile_forward(module: nn.Module, mode: str, name: str) -> None:
    """Replace `module`'s forward by a compiled one (in place: parameters and state_dict keys stay as they are)."""
    if not isinstance(module.forward, CompiledOrEager):
        module.forward = CompiledOrEager(module.forward, mode, name)
