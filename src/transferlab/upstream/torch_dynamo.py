"""torch's ``torch._dynamo.exc.TorchDynamoException``: the base class of every compiler failure.

Why: a failure inside ``torch.compile`` (dynamo, or a backend such as inductor) is the compiler's, not the
model's; transferlab reports it as such and says how to run without compiling (`transferlab.utils.compile`).
torch exports no public base class for these errors.
Without it: a compiler bug reads as a fault in the user's model.
Checked: torch 2.x (2.9).
"""

from __future__ import annotations


def is_dynamo_error(err: BaseException) -> bool:
    """Whether `err` is one of dynamo's own exceptions (its backends' failures are wrapped in one)."""
    import torch._dynamo.exc  # imported by torch.compile already; lazily here, so importing this module stays cheap

    return isinstance(err, torch._dynamo.exc.TorchDynamoException)
