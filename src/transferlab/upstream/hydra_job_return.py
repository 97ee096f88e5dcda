"""Hydra's ``JobReturn._return_value``: a job's return value or, for a failed job, its exception.

Why: ``JobReturn.return_value`` re-raises a failed job's exception, which a launcher or sweeper that reports
failures (instead of stopping at the first) must read without raising; and a launcher that builds the outcome
of a job that died must store the failure there (the public setter stores a value, not a failure).
Without it: one failed job ends a sweep with its traceback (tests/test_sweep_failures.py).
Checked: hydra-core 1.3.2–1.3.8.
"""

from __future__ import annotations

from typing import Any


def stored_value(ret: Any) -> Any:
    """The return value of a finished job or the exception of a failed one, without raising it."""
    return getattr(ret, "_return_value", None)


def store_failure(ret: Any, error: BaseException) -> None:
    """Record `error` as the failure of `ret` (whose status the caller sets to FAILED)."""
    ret._return_value = error
