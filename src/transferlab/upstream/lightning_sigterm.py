"""Lightning's ``Trainer._signal_connector.received_sigterm``: the flag that stops training at a step's end.

Why: under submitit on SLURM the time-limit signal (USR2) must stop training the way SIGTERM does, at the end of
the current step, where the checkpoint callback writes ``last.ckpt`` (`transferlab.runner.step_boundary_requeue`).
Lightning reads the flag through the public ``Trainer.received_sigterm`` property but offers no way to set it.
Without it: a SLURM job at its time limit is requeued mid-step, with no checkpoint to resume from.
Checked: pytorch-lightning 2.0–2.6.6, lightning 2.6.6.
"""

from __future__ import annotations

from typing import Any


def request_stop(trainer: Any) -> None:
    """Ask `trainer` to stop at the end of the current step, as Lightning's own SIGTERM handler does."""
    trainer._signal_connector.received_sigterm = True
