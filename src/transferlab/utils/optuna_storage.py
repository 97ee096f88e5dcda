"""Where an Optuna sweep keeps its study: one spelling shared by the sweeper and its jobs.

A database URL (``sqlite:///…``, ``postgresql://…``) is Optuna's RDB storage. A plain file path is an Optuna
journal file (`JournalStorage`), the default: ``<sweep dir>/optuna.db``. A journal is an append-only log that
Optuna recommends when many processes write one study over a shared filesystem (SLURM jobs on NFS), where
SQLite's locking is unreliable; and ``optuna-dashboard <sweep dir>/optuna.db`` opens it as it is (the
dashboard takes a bare path for a journal file, but wants ``sqlite:///`` for an SQLite file).
"""

from __future__ import annotations

from typing import Any


def is_url(spec: str) -> bool:
    return "://" in spec


def open_storage(spec: str) -> Any:
    """The Optuna storage `spec` names: the URL itself (Optuna opens it) or a journal file's storage."""
    if is_url(spec):
        return spec
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(spec))
