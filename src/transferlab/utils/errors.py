"""User-facing errors: one line saying what was wrong and how to fix it.

Internal bugs keep their traceback; anything the user can fix by changing a config value, a path or a
file raises `UserError`, which the CLI prints as ``error: <message>`` and exits with status 2.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input the user can fix; printed as one line, never with a traceback."""


def closest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ``did you mean …?`` hint for a misspelt name ('' when nothing is close)."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" Did you mean {', '.join(matches)}?" if matches else ""


def error_chain(err: BaseException | None) -> Iterator[BaseException]:
    """`err` and the exceptions behind it (``raise … from``, or raised while handling), each once."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def find_user_error(err: BaseException | None) -> UserError | None:
    """The `UserError` behind `err`, also when a library re-raised it (Hydra's instantiate does)."""
    return next((e for e in error_chain(err) if isinstance(e, UserError)), None)


def one_line(err: BaseException) -> str:
    """The message as one line (a DataLoader worker wraps it in a traceback: keep its last line)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    return last.split("UserError: ", 1)[-1]


def describe(err: BaseException) -> str:
    """First line of an exception's message, without a trailing period (it is embedded in a sentence)."""
    text = str(err).strip()
    return text.splitlines()[0].rstrip(".:") if text else type(err).__name__


def report_user_errors(fn: F) -> F:
    """Decorate a CLI entry so a `UserError` ends the process with a one-line message and exit 2.

    So does a failed write inside a library (a full disk under TensorBoard's event writer: `io.write_fault`);
    transferlab's own writes raise `io.WriteFailed`, a `UserError`, themselves."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            from transferlab.utils.io import write_fault  # io builds on this module

            user_error = find_user_error(err) or write_fault(err)
            if user_error is None:
                raise
            message = f"error: {one_line(user_error)}"
            if process_rank() == 0:
                print(message, file=sys.stderr, flush=True)
            else:  # DDP ranks fail together (same config, collective checks): rank 0 says it once
                to_log_files(message)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]


def process_rank() -> int:
    """This process's global rank: Lightning's (set from the strategy once it runs), else the launcher's env."""
    rank_zero = sys.modules.get("lightning_utilities.core.rank_zero")
    rank = getattr(getattr(rank_zero, "rank_zero_only", None), "rank", None)
    if rank is None:
        rank = next((os.environ[name] for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK") if name in os.environ), 0)
    return int(rank)


def to_log_files(message: str) -> None:
    """Write `message` into the job's log files only (a DDP child rank's ``train_rank<N>.log``), not the console."""
    record = logging.LogRecord("transferlab", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
