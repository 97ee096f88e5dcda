"""Lightning's ``WandbLogger._wandb_init`` and ``WandbLogger._experiment``.

Why ``_wandb_init`` (the arguments the logger will pass to ``wandb.init``): Lightning passes ``anonymous=None``
when the user set nothing, and W&B ≥ 0.19 warns on every run that the setting is deprecated; removing the unset
key before the run starts keeps the console to transferlab's own lines.
Why ``_experiment`` (the W&B run, or None before it started): ``WandbLogger.experiment`` starts a run when there
is none, so finishing a job's run must read the attribute to avoid starting one just to finish it.
Without them: a W&B warning on every run; an empty W&B run for a job that never logged.
Checked: pytorch-lightning 2.0–2.6.6 (lightning 2.6.6) with wandb 0.31.
"""

from __future__ import annotations

from typing import Any


def drop_unset_anonymous(logger: Any) -> None:
    """Drop ``anonymous=None`` from the arguments `logger` (a WandbLogger) will pass to ``wandb.init``."""
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)


def started_run(logger: Any) -> Any:
    """The W&B run of `logger` (a WandbLogger) if it started one, else None; never starts a run."""
    return logger._experiment
