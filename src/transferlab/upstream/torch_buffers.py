"""torch's ``nn.Module._non_persistent_buffers_set``: which of a module's buffers stay out of its state dict.

Why: transfer code counts what a layer holds itself (parameters and persistent buffers); ``named_buffers`` lists
non-persistent ones too and torch has no public way to tell them apart short of building a state dict.
Without it: layers with non-persistent buffers (e.g. position ids) would count as holding transferable state.
Checked: torch 2.x (2.9).
"""

from __future__ import annotations

from torch import nn


def persistent_buffer_names(module: nn.Module) -> list[str]:
    """Names of the persistent buffers `module` holds itself (not its children's)."""
    return [n for n, _ in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set]
