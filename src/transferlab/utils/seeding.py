"""Seeds for random streams of their own (per DDP rank, per epoch, per sample), derived from the run's seed."""

from __future__ import annotations

_MIX = 1_000_003  # a prime: distinct (seed, rank, epoch, …) give distinct seeds for any realistic rank and epoch


def stream_seed(*parts: int) -> int:
    """One generator seed from the run's seed and the stream's coordinates (rank, epoch, sample index, …): the same
    parts always give the same seed, and ranks or epochs that differ give different ones."""
    seed = 0
    for part in parts:
        seed = (seed * _MIX + part) % 2**63
    return seed
