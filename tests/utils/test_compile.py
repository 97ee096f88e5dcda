"""``model.compile``: the task's forward (and backward) compiled, and a clean eager fallback when it cannot be."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import fit_briefly
from transferlab.runner import build
from transferlab.utils import compile as compile_module
from transferlab.utils.compile import CompiledOrEager, compile_forward


def test_a_model_that_does_not_compile_warns_once_and_runs_eagerly(monkeypatch) -> None:
    def broken_compile(fn, mode=None):
        def fails(*args, **kwargs):
            raise RuntimeError("backend exploded\nlong compiler traceback")

        return fails

    monkeypatch.setattr(compile_module.torch, "compile", broken_compile)
    net = nn.Linear(3, 2)
    expected = net(torch.ones(1, 3))
    compile_forward(net, "reduce-overhead", "Linear")
    with pytest.warns(
        UserWarning,
        match=r"model.compile=reduce-overhead: Linear could not be compiled \(RuntimeError: "
        r"backend exploded\); running it eagerly",
    ):
        out = net(torch.ones(1, 3))
    assert torch.equal(out, expected) and net.forward.compiled is None
    assert torch.equal(net(torch.ones(1, 3)), expected)  # no second warning: eager from now on


def test_compile_forward_is_in_place_and_idempotent() -> None:
    net = nn.Linear(3, 2)
    keys = list(net.state_dict())
    compile_forward(net, "default", "Linear")
    wrapper = net.forward
    compile_forward(net, "default", "Linear")
    assert net.forward is wrapper and isinstance(wrapper, CompiledOrEager) and list(net.state_dict()) == keys


@pytest.mark.slow
def test_compiled_task_trains_like_the_eager_one(make_cfg) -> None:
    """model.compile=default compiles normalisation + backbone + head; the steps give the eager losses."""
    losses = {}
    for mode in ("null", "default"):
        cfg = make_cfg(
            f"model.compile={mode}", "logger=none", "data/augment=none", "model.head_dropout=0", out=f"run-{mode}"
        )
        torch.manual_seed(0)
        datamodule = build(cfg.data, "data")
        task = build(cfg.model, "model", **datamodule.task_args())
        fit_briefly(task, datamodule, steps=2)
        losses[mode] = task.trainer.callback_metrics["train/loss"]
        if mode == "default":
            assert isinstance(task.forward, CompiledOrEager) and task.forward.compiled is not None
            assert task.forward.first_call_s is not None
    assert torch.allclose(losses["null"], losses["default"], rtol=1e-3)
