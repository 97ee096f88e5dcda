"""warmup_cosine: linear warm-up to the base LR, then cosine decay to zero at the last step, per batch."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transferlab.optim import warmup_cosine


def lrs(total_steps: int, steps: int, base_lr: float = 1.0, **kwargs) -> list[float]:
    """The LR of each of the first `steps` optimizer steps (the scheduler is stepped after every batch)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = warmup_cosine(optimizer, total_steps, **kwargs)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def expected(step: int, total: int, fraction: float) -> float:
    warmup = max(1, round(total * fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress))


def test_schedule_by_hand() -> None:
    # 10 steps, 20 % warm-up: 2 warm-up steps (0.5, 1.0), then cosine over the 8 remaining steps.
    values = lrs(10, 12, warmup_fraction=0.2)
    cosine = [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)]
    assert values == pytest.approx([0.5, 1.0, *cosine, 0.0])
    assert values[2] == 1.0 and values[6] == pytest.approx(0.5) and values[10] == pytest.approx(0.0, abs=1e-12)


def test_default_warmup_is_five_percent() -> None:
    values = lrs(100, 6)
    assert values[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and values[5] == 1.0


def test_warmup_is_at_least_one_step() -> None:
    assert lrs(10, 3, warmup_fraction=0.0) == pytest.approx([1.0, 1.0, expected(2, 10, 0.0)])
    assert lrs(1, 1, warmup_fraction=0.05) == [1.0]  # a one-step run: warm-up is that step, at the full LR


def test_warmup_covers_the_whole_run() -> None:
    assert lrs(4, 5, warmup_fraction=1.0) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])


def test_scales_every_param_group() -> None:
    head, backbone = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [head], "lr": 0.1}, {"params": [backbone], "lr": 0.01}])
    scheduler = warmup_cosine(optimizer, total_steps=20, warmup_fraction=0.1)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.005])
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.01])


@settings(max_examples=50, deadline=None)
@given(total=st.integers(1, 200), fraction=st.floats(0.0, 1.0), base_lr=st.floats(1e-4, 1.0))
def test_schedule_properties(total: int, fraction: float, base_lr: float) -> None:
    values = lrs(total, total + 3, base_lr=base_lr, warmup_fraction=fraction)
    warmup = max(1, round(total * fraction))
    assert values == pytest.approx([base_lr * expected(s, total, fraction) for s in range(total + 3)], abs=1e-12)
    assert values[min(warmup, total) - 1] == pytest.approx(base_lr)  # the peak is the base LR
    assert all(0 <= v <= base_lr * (1 + 1e-12) for v in values)
    ramp = values[:warmup]
    assert all(a < b for a, b in zip(ramp, ramp[1:]))  # strictly increasing warm-up
    decay = values[warmup - 1 :]
    assert all(a >= b - 1e-15 for a, b in zip(decay, decay[1:]))  # never increases after the peak
    if total > warmup:
        assert values[total] == pytest.approx(0.0, abs=1e-12)  # reaches zero at the end and stays there
        assert values[total + 2] == pytest.approx(0.0, abs=1e-12)
