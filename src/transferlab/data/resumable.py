"""A shuffling DataLoader that a run interrupted mid-epoch resumes exactly where it stopped.

Lightning restores the model, optimizer, scheduler and loop counters from ``last.ckpt``, but a plain
DataLoader starts the interrupted epoch again with a new shuffle (Lightning warns that results become
unreliable). This loader implements Lightning's ``state_dict``/``load_state_dict`` protocol: the checkpoint
stores the epoch's shuffle seed, how many batches were already trained on and the random-number state
at that moment; resuming replays the same order from the next batch with the same random state, so a
resumed deterministic run ends with the same weights as an uninterrupted one (tests/test_resume.py).

Libraries: torchdata's StatefulDataLoader also saves a loader's position, at the price of a dependency whose
releases track torch's; this is a sampler and its RNG state over the plain DataLoader (tests/test_resume.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class SeededShuffle(Sampler[int]):
    """A random permutation per epoch from a seed drawn off the global RNG (as `RandomSampler` does), kept
    so the same epoch can be replayed; `skip` leading indices are left out once (a resumed epoch)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seed: int | None = None
        self._replay: tuple[int, int] | None = None  # (seed, indices to skip) for the next epoch only

    def replay(self, seed: int, skip: int) -> None:
        self._replay = (seed, skip)

    def __iter__(self) -> Iterator[int]:
        if self._replay is not None:
            self.seed, skip = self._replay
            self._replay = None
        else:
            self.seed, skip = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed))
        return iter(order[skip:].tolist())

    def __len__(self) -> int:
        return self.size


def _rng_state() -> dict[str, Any]:
    """torch, NumPy and Python random states as tensors and plain values (checkpoints load weights-only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableLoader(DataLoader):
    """A DataLoader (``shuffle=True`` → `SeededShuffle`) whose position within an epoch is checkpointed.

    `current_epoch` tells which epoch the trainer is in: a stored position is replayed only in the epoch it
    was saved in (a checkpoint written at an epoch's end starts the next epoch afresh).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 1,
        shuffle: bool | None = None,
        sampler: Sampler | None = None,
        current_epoch: Callable[[], int] | None = None,
        **kwargs: Any,
    ) -> None:
        if shuffle and sampler is None:
            sampler, shuffle = SeededShuffle(len(dataset)), None  # type: ignore[arg-type]
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, **kwargs)
        self.current_epoch = current_epoch or (lambda: 0)
        self._batches = 0
        self._epoch = 0
        self._pending: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: nothing runs until the first batch is asked for. Lightning may create the iterator
        # before it restores a checkpoint (to count the steps for a schedule), so the position is applied then.
        resume, self._pending = self._pending, None
        epoch = self.current_epoch()
        if resume is not None and resume["epoch"] != epoch:
            resume = None
        if resume is not None and isinstance(self.sampler, SeededShuffle):
            self.sampler.replay(resume["seed"], resume["batches"] * (self.batch_size or 1))
        self._epoch, self._batches = epoch, resume["batches"] if resume is not None else 0
        batches = super().__iter__()
        if resume is not None:  # the random state right after the last trained batch, before the next fetch
            _set_rng_state(resume["rng"])
        for batch in batches:
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        seed = self.sampler.seed if isinstance(self.sampler, SeededShuffle) else None
        return {"epoch": self._epoch, "batches": self._batches, "seed": seed, "rng": _rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed") is not None and 0 < state.get("batches", 0) < len(self):
            self._pending = state
