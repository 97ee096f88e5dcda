"""Callbacks and the trainer builder: what happens at epoch boundaries, and what the progress bar reads."""

from __future__ import annotations

import errno
import json
import signal
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from conftest import run_cli, start_cli
from transferlab import callbacks
from transferlab.callbacks import EpochTimer, ModelCheckpoint, ProgressBar
from transferlab.runner import AtomicCheckpointIO, build, build_trainer
from transferlab.train import run
from transferlab.utils.io import WriteFailed


def test_callbacks_none_writes_no_checkpoint(make_cfg, tmp_path) -> None:
    """Lightning adds a checkpoint writer of its own when none is configured; transferlab does not."""
    run(make_cfg("callbacks=none", "logger=none", "trainer.max_epochs=2"))
    assert not list(tmp_path.rglob("*.ckpt"))


def fit_with_checkpoint(make_cfg, epochs: int, **checkpoint_args) -> tuple[list[int], ModelCheckpoint]:
    """Fit `epochs` epochs with transferlab's checkpoint callback; the epochs at which last.ckpt was written."""
    cfg = make_cfg("logger=none", f"trainer.max_epochs={epochs}", "callbacks.early_stopping=null")
    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args())
    checkpoint = build(cfg.callbacks.model_checkpoint, "callbacks", **checkpoint_args)
    written: list[int] = []
    original = checkpoint._save_checkpoint

    def recording(trainer, filepath):
        if filepath.endswith("last.ckpt"):
            written.append(trainer.current_epoch)
        original(trainer, filepath)

    checkpoint._save_checkpoint = recording
    trainer = build_trainer(cfg, [checkpoint], [])
    trainer.fit(task, datamodule=datamodule)
    return written, checkpoint


def test_last_checkpoint_is_throttled_but_always_written_at_the_end(make_cfg) -> None:
    written, checkpoint = fit_with_checkpoint(make_cfg, epochs=4, last_every_minutes=10)
    assert written == [0, 4]  # the first epoch (nothing to resume from yet), then the final state (after epoch 3)
    last = torch.load(checkpoint.last_model_path, map_location="cpu", weights_only=True)
    assert last["epoch"] == written[-1] and last["global_step"] == 24  # complete, and the final state


def test_last_checkpoint_every_epoch_with_zero(make_cfg) -> None:
    written, _ = fit_with_checkpoint(make_cfg, epochs=3, last_every_minutes=0)
    assert written == [0, 1, 2]


def test_a_failed_background_write_stops_the_run_at_the_next_step(make_cfg, tmp_path, monkeypatch) -> None:
    cfg = make_cfg("logger=none", "trainer.max_epochs=3", "callbacks.model_checkpoint.last_every_minutes=0")
    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args())
    checkpoint = build(cfg.callbacks.model_checkpoint, "callbacks")
    trainer = build_trainer(cfg, [checkpoint], [])
    attempts: list[str] = []
    write = AtomicCheckpointIO.save_checkpoint

    def full_disk_for_last(self, checkpoint, path, storage_options=None) -> None:
        attempts.append(Path(path).name)
        if Path(path).name == "last.ckpt":
            raise WriteFailed(Path(path), OSError(errno.ENOSPC, "No space left on device"))
        write(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", full_disk_for_last)  # the background writer's writer
    with pytest.raises(WriteFailed, match="last.ckpt: no space left on device"):
        trainer.fit(task, datamodule=datamodule)
    assert attempts == ["best.ckpt", "last.ckpt"]  # epoch 1's saves; nothing after the failure
    assert 6 < trainer.global_step < 12  # stopped in epoch 2 (6 steps an epoch), not at its end's save
    assert torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)["global_step"] == 6


def test_progress_bar_shows_step_loss_and_monitored_metric(make_cfg) -> None:
    cfg = make_cfg(
        "logger=none", "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=true"
    )
    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args())
    trainer = build_trainer(cfg, [], [])
    bars = [c for c in trainer.callbacks if isinstance(c, ProgressBar)]
    assert len(bars) == 1 and bars[0].keys == ("train/loss_step", "train/loss", "val/acc")
    trainer.fit(task, datamodule=datamodule)
    shown = bars[0].get_metrics(trainer, task)
    assert {"train/loss_step", "train/loss", "val/acc"} <= set(shown)
    assert all(isinstance(shown[k], float) for k in ("train/loss_step", "val/acc"))


class SigtermAt(pl.Callback):
    """Deliver a SIGTERM (as Lightning's signal handler records it) at one hook of the second epoch."""

    def __init__(self, hook: str) -> None:
        setattr(self, hook, self._fire)

    def _fire(self, trainer: pl.Trainer, *args) -> None:
        if trainer.current_epoch == 1 and not trainer.sanity_checking:
            trainer._signal_connector.received_sigterm = True


@pytest.mark.parametrize("hook", ["on_train_batch_start", "on_validation_batch_start", "on_train_epoch_end"])
def test_sigterm_anywhere_in_an_epoch_saves_the_state_and_prints_the_hint(make_cfg, hook, capsys) -> None:
    """Lightning stops on SIGTERM after a step, mid-validation and at an epoch's end: each one saves."""
    cfg = make_cfg("logger=none", "trainer.max_epochs=4", "callbacks.early_stopping=null")
    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args())
    checkpoint = build(cfg.callbacks.model_checkpoint, "callbacks", last_every_minutes=10)
    trainer = build_trainer(cfg, [checkpoint, SigtermAt(hook)], [])
    with pytest.raises(SIGTERMException):
        trainer.fit(task, datamodule=datamodule)
    hint = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Interrupted (SIGTERM)")]
    assert len(hint) == 1 and f"ckpt_path={checkpoint.last_model_path}" in hint[0]
    state = torch.load(checkpoint.last_model_path, map_location="cpu", weights_only=True)
    assert state["global_step"] == trainer.global_step > 6  # the interrupted epoch's state, not the first's


class CtrlCAt(pl.Callback):
    """Ctrl-C (a KeyboardInterrupt) after training step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_ctrl_c_saves_the_state_and_prints_the_hint(make_cfg, capsys) -> None:
    cfg = make_cfg("logger=none", "trainer.max_epochs=3", "callbacks.early_stopping=null")
    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args())
    checkpoint = build(cfg.callbacks.model_checkpoint, "callbacks", last_every_minutes=10)
    trainer = build_trainer(cfg, [checkpoint, CtrlCAt(8)], [])
    with pytest.raises(SystemExit) as stopped:  # Lightning's graceful shutdown
        trainer.fit(task, datamodule=datamodule)
    assert stopped.value.code == 1
    hint = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Interrupted (Ctrl-C)")]
    assert len(hint) == 1 and "at epoch 1, step 8" in hint[0] and f"ckpt_path={checkpoint.last_model_path}" in hint[0]
    state = torch.load(checkpoint.last_model_path, map_location="cpu", weights_only=True)
    assert state["global_step"] == 8


@pytest.mark.slow
def test_sigterm_saves_the_state_and_says_how_to_resume(tmp_path) -> None:
    """A SIGTERM mid-run (a scheduler's time limit) stops at the end of the step with last.ckpt written and a
    one-line resume hint, exit 143, no metrics.json; the hinted command then finishes the run."""
    run_dir = tmp_path / "run"
    args = ["debug=tiny", "trainer.max_epochs=40", "callbacks.early_stopping=null", f"hydra.run.dir={run_dir}"]
    process = start_cli("tl-train", *args, cwd=tmp_path, log=tmp_path / "first.log")
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # into a later epoch, mid-way through its steps most likely
    assert process.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143, (tmp_path / "first.log").read_text()[-3000:]
    output = (tmp_path / "first.log").read_text()
    hint = [line for line in output.splitlines() if line.startswith("Interrupted (SIGTERM)")]
    assert len(hint) == 1 and f"ckpt_path={last}" in hint[0] and "Traceback" not in output, output[-3000:]
    assert not (run_dir / "metrics.json").exists()
    state = torch.load(last, map_location="cpu", weights_only=True)
    step = int(hint[0].split("step ")[1].split(";")[0])
    assert state["global_step"] == step > 0  # the state at the interruption, not the first epoch's
    resumed = run_cli("tl-train", *args, f"ckpt_path={last}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["epochs"] == 40 and summary["resumed_from"] == str(last)


def test_epoch_timer_waits_for_the_device_at_each_boundary_only(make_cfg, monkeypatch) -> None:
    """The boundary is timed between synchronised ends (a GPU runs behind the host): the device is waited for at an
    epoch's last step and at the next epoch's first, never in the steps between."""
    waits: list[tuple[int, str]] = []
    trainer_box: list[pl.Trainer] = []
    monkeypatch.setattr(
        callbacks, "synchronize", lambda device: waits.append((trainer_box[0].global_step, device.type))
    )
    cfg = make_cfg("trainer.max_epochs=3", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1")
    datamodule = build(cfg.data, "data")
    task = build(cfg.model, "model", **datamodule.task_args())
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=3,
        limit_train_batches=3,
        limit_val_batches=1,
        callbacks=[EpochTimer()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer_box.append(trainer)
    trainer.fit(task, datamodule=datamodule)
    # after the 3rd step of each epoch; before the 1st step of the 2nd and 3rd epochs (global step 3 and 6)
    assert waits == [(3, "cpu"), (3, "cpu"), (6, "cpu"), (6, "cpu"), (9, "cpu")]
    assert trainer.callback_metrics["time/boundary_s"] >= 0 and "time/epoch_s" in trainer.callback_metrics


def test_synchronize_waits_for_cuda_only(monkeypatch) -> None:
    waited: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", waited.append)
    callbacks.synchronize(torch.device("cpu"))
    assert waited == []
    callbacks.synchronize(torch.device("cuda", 1))
    assert waited == [torch.device("cuda", 1)]
