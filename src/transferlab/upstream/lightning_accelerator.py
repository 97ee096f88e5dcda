"""Lightning's ``_AcceleratorConnector._choose_auto_accelerator`` and ``_choose_gpu_accelerator_backend``.

Why: some trainer settings (deterministic kernels, cuDNN benchmark, precision checks) depend on the accelerator
Lightning will pick, and must be known before the trainer exists; these static methods are Lightning's own rules
for ``accelerator="auto"`` and ``"gpu"``, so the answer cannot disagree with the trainer's.
Without them: `transferlab.runner.decided_accelerator` would have to copy Lightning's rules.
Checked: pytorch-lightning 2.0–2.6.6, lightning 2.6.6.
"""

from __future__ import annotations


def auto_accelerator() -> str:
    """What ``accelerator="auto"`` becomes on this machine ("cuda", "mps", "cpu", …)."""
    from pytorch_lightning.trainer.connectors.accelerator_connector import _AcceleratorConnector

    return str(_AcceleratorConnector._choose_auto_accelerator())


def gpu_accelerator_backend() -> str:
    """What ``accelerator="gpu"`` becomes ("cuda" or "mps"); raises Lightning's MisconfigurationException on
    a machine with neither."""
    from pytorch_lightning.trainer.connectors.accelerator_connector import _AcceleratorConnector

    return str(_AcceleratorConnector._choose_gpu_accelerator_backend())
