"""Determinism and exact resume: the same seed gives the same run, and a run interrupted mid-epoch and
resumed from its ``last.ckpt`` ends exactly where the uninterrupted run ends (CPU, deterministic)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from conftest import KEEP_LAST
from transferlab.train import run

# Augmentation (random crops + flips) and shuffling both draw random numbers: a resume that replays the
# wrong order or the wrong random state ends elsewhere. 54 training images at batch 8: 6 steps per epoch.
ARGS = ("trainer.deterministic=true", "trainer.max_epochs=3", "callbacks.early_stopping=null", "logger=none", KEEP_LAST)


class SigtermAtStep(pl.Callback):
    """Deliver a SIGTERM (as a scheduler's time limit does) right after training step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer._signal_connector.received_sigterm = True


def summary(cfg: DictConfig) -> dict[str, Any]:
    """metrics.json without the timings (wall-clock, never reproducible)."""
    result = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    result["metrics"] = {name: value for name, value in result["metrics"].items() if not name.startswith("time/")}
    return result


def final_weights(cfg: DictConfig) -> dict[str, torch.Tensor]:
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    return torch.load(last, map_location="cpu", weights_only=True)["state_dict"]


def test_same_seed_same_metrics(make_cfg: Callable[..., DictConfig]) -> None:
    results = []
    for out, seed in (("first", 0), ("second", 0), ("other", 1)):  # composed one at a time: Hydra's state is global
        cfg = make_cfg(*ARGS, f"seed={seed}", out=out)
        run(cfg)
        results.append(summary(cfg)["metrics"])
    assert results[0] == results[1]
    assert results[2] != results[0], "the seed must matter"


def test_interrupted_mid_epoch_and_resumed_run_ends_like_an_uninterrupted_one(
    make_cfg: Callable[..., DictConfig],
) -> None:
    stop_step = 9  # epoch 1, after its third of six batches
    full = make_cfg(*ARGS, out="full")
    run(full)
    full_summary, full_weights = summary(full), final_weights(full)
    stop = ["+callbacks.stop._target_=test_resume.SigtermAtStep", f"+callbacks.stop.step={stop_step}"]
    cut = make_cfg(*ARGS, *stop, out="cut")
    with pytest.raises(SystemExit) as stopped:
        run(cut)
    assert stopped.value.code == 143
    saved = torch.load(Path(cut.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == stop_step
    resumed = make_cfg(*ARGS, out="cut")  # the same run directory: it resumes from last.ckpt by itself
    run(resumed)
    assert summary(resumed)["resumed_from"] == str(Path(cut.paths.output_dir) / "checkpoints" / "last.ckpt")
    assert summary(resumed)["global_step"] == full_summary["global_step"]
    assert summary(resumed)["metrics"] == full_summary["metrics"]
    for name, tensor in full_weights.items():
        assert torch.equal(tensor, final_weights(resumed)[name]), name
