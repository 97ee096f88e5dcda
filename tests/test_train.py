"""The train entry in-process: return value for sweepers, seeding, debug presets, metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import KEEP_LAST
from transferlab.train import run
from transferlab.utils.errors import UserError


def test_returns_best_monitored_value_and_seed_0_reproduces(make_cfg) -> None:
    first_cfg = make_cfg("seed=0", out="a")
    first = run(first_cfg)
    second_cfg = make_cfg("seed=0", out="b")
    second = run(second_cfg)
    summary_a = json.loads((Path(first_cfg.paths.output_dir) / "metrics.json").read_text())
    summary_b = json.loads((Path(second_cfg.paths.output_dir) / "metrics.json").read_text())
    assert isinstance(first, float) and first == summary_a["monitor"]["best"]
    assert first == second and summary_a["metrics"] == summary_b["metrics"]  # seed 0 is honoured, workers too


def test_fast_dev_run_debug_preset(make_cfg) -> None:
    cfg = make_cfg("debug=fdr")
    run(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert summary["global_step"] == 1 and "test/acc" in summary["metrics"]


def test_nothing_to_do_is_an_error(make_cfg) -> None:
    with pytest.raises(UserError, match="nothing to do"):
        run(make_cfg("train=false", "test=false"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.precision=17", r"trainer.precision must be one of 64, .*got 17"),
        ("model.optimizer.lr=abc", r"model.optimizer.lr must be a number >= 1e-12, got 'abc'"),
        (
            "+trainer.gradient_clip_algorithm=sideways",
            r"invalid trainer settings: .*sideways.*Check the trainer\.\* overrides",
        ),
        ("model.optimizer._target_=torch.optim.Adamz", r"Error loading 'torch.optim.Adamz'"),
        ("data/augment=flip_rotate data.augment.transforms.1.degrees=[1,2,3]", r"invalid data settings"),
    ],
)
def test_bad_config_values_become_user_errors_before_training(make_cfg, override: str, message: str) -> None:
    cfg = make_cfg(*override.split())
    with pytest.raises(UserError, match=message):
        run(cfg)
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_eval_on_other_data_than_the_run_used(make_cfg) -> None:
    from transferlab.evaluate import run as evaluate

    cfg = make_cfg("test=false")
    run(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    same = evaluate(make_cfg(f"ckpt_path={ckpt}", "trainer.accelerator=cpu", name="eval", out="eval_same"))
    other = evaluate(
        make_cfg(
            f"ckpt_path={ckpt}",
            "trainer.accelerator=cpu",
            "data=shapes",
            "data.seed=7",
            "data.test_size=30",
            name="eval",
            out="eval_other",
        )
    )
    assert set(same) == set(other) and same["test/loss"] != other["test/loss"]


# -- runs that end early end well ----------------------------------------------------------------------
# 54 training images at batch 8: 6 steps per epoch. Each of these stops before, between or without
# validations; every one must finish, test the best (or else the final) weights and write metrics.json.
EARLY_ENDINGS = [
    ["trainer.max_steps=2"],  # stops mid-epoch, before any validation
    ["trainer.limit_val_batches=0", "trainer.max_epochs=2"],  # never validates
    ["trainer.check_val_every_n_epoch=5", "trainer.max_epochs=2"],  # validation due after the end
    ["trainer.val_check_interval=2", "trainer.max_epochs=1"],  # validates mid-epoch, three times
    ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.max_epochs=2"],
    ["trainer.max_epochs=0", "trainer.min_epochs=0"],  # trains nothing: tests the initial weights
    ["trainer.max_steps=3", "experiment=style_transfer"],  # the crash the issue reported
    ["trainer.max_steps=2", "experiment=denoising"],
]


@pytest.mark.parametrize("overrides", EARLY_ENDINGS, ids=[" ".join(o) for o in EARLY_ENDINGS])
def test_runs_that_end_early_still_test_and_write_metrics(make_cfg, overrides: list[str]) -> None:
    from conftest import TINY_PHOTOS

    photos = any(o.startswith("experiment=") for o in overrides)
    base = [*TINY_PHOTOS, "model.style_size=32"] if "experiment=style_transfer" in overrides else TINY_PHOTOS
    cfg = make_cfg(*overrides, *(base if photos else []), tiny=not photos)
    run(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert any(name.startswith("test/") for name in summary["metrics"]), summary["metrics"]
    tested = summary["tested_checkpoint"]
    assert tested == "final weights" or Path(tested).is_file()
    if summary["best_checkpoint"] is None:  # nothing validated: the final weights are what was tested
        assert tested == "final weights"


class PoisonAtStep:
    """A test callback that turns a weight into NaN after training step `step` (the next loss is NaN)."""

    def __new__(cls, step: int):  # a real Lightning callback, built from this module's name by Hydra
        import pytorch_lightning as pl
        import torch

        class Poison(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, *args) -> None:
                if trainer.global_step == step:
                    with torch.no_grad():
                        next(pl_module.parameters()).view(-1)[0] = float("nan")

        return Poison()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(make_cfg) -> None:
    import torch

    from transferlab.callbacks import NonFiniteLoss

    cfg = make_cfg(
        "trainer.max_epochs=4",
        "callbacks.early_stopping=null",
        "callbacks.model_checkpoint.last_every_minutes=0",
        "+callbacks.poison._target_=test_train.PoisonAtStep",
        "+callbacks.poison.step=8",
    )
    with pytest.raises(NonFiniteLoss, match=r"became NaN/Inf at step 9 \(epoch 1\); the run stopped and the last good"):
        run(cfg)
    out = Path(cfg.paths.output_dir)
    assert not (out / "metrics.json").exists()
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 6, "the state of the last finished epoch, before the NaN"
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_a_checkpoint_that_does_not_fit_the_config_is_refused(make_cfg) -> None:
    first = make_cfg("trainer.max_epochs=1", KEEP_LAST, out="first")
    run(first)
    best = Path(first.paths.output_dir) / "checkpoints" / "best.ckpt"
    other = make_cfg(f"ckpt_path={best}", "model.backbone.name=resnet18", out="other")
    with pytest.raises(UserError, match=r"does not fit this config: it has no parameter backbone\.conv1\.weight"):
        run(other)
    assert not (Path(other.paths.output_dir) / "metrics.json").exists()
    weights_only = make_cfg(f"ckpt_path={best}", "trainer.max_epochs=2", out="weights_only")
    with pytest.raises(UserError, match=r"best.ckpt holds weights only \(no optimizer state\), so training cannot"):
        run(weights_only)
    last = best.with_name("last.ckpt")
    same = make_cfg(f"ckpt_path={last}", "trainer.max_epochs=2", out="same")  # the same model resumes
    run(same)
    assert json.loads((Path(same.paths.output_dir) / "metrics.json").read_text())["epochs"] == 2


def test_checkpoints_are_sized_to_their_purpose(make_cfg) -> None:
    """best.ckpt: weights and run config, no optimizer state; last.ckpt: full state, gone after a clean end."""
    import torch

    cfg = make_cfg("trainer.max_epochs=1", "model.optimizer._target_=torch.optim.AdamW", KEEP_LAST, out="kept")
    run(cfg)
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    best = torch.load(checkpoints / "best.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert "optimizer_states" not in best and last["optimizer_states"], "AdamW moments only where resume needs them"
    assert best["transferlab"]["config"] == last["transferlab"]["config"], "the run config is in both"
    assert (checkpoints / "best.ckpt").stat().st_size < 0.5 * (checkpoints / "last.ckpt").stat().st_size
    clean = make_cfg("trainer.max_epochs=1", out="clean")
    run(clean)
    assert sorted(p.name for p in (Path(clean.paths.output_dir) / "checkpoints").iterdir()) == ["best.ckpt"]
    full = make_cfg("trainer.max_epochs=1", "callbacks.model_checkpoint.best_weights_only=false", out="full")
    run(full)
    best = torch.load(Path(full.paths.output_dir) / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert best["optimizer_states"]


def test_ckpt_path_last_resumes_this_run_directory(make_cfg) -> None:
    cfg = make_cfg("trainer.max_epochs=1", "callbacks.early_stopping=null", KEEP_LAST)
    run(cfg)
    out = Path(cfg.paths.output_dir)
    resumed = make_cfg("trainer.max_epochs=2", "callbacks.early_stopping=null", "ckpt_path=last")
    run(resumed)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["resumed_from"] == str(out / "checkpoints" / "last.ckpt") and summary["epochs"] == 2
    with pytest.raises(UserError, match=r"ckpt_path=last: .*last.ckpt does not exist. Re-run into"):
        run(make_cfg("ckpt_path=last", out="elsewhere"))


def test_non_finite_metrics_are_named_not_dropped() -> None:
    """metrics.json keeps strict JSON (finite floats under "metrics") and names what diverged, so a run whose test
    loss is inf does not look like a run that never tested."""
    import torch

    from transferlab.runner import split_metrics

    logged = {"test/acc": torch.tensor(0.5), "test/loss": torch.tensor(float("inf")), "val/loss": float("nan")}
    finite, non_finite = split_metrics(logged)
    assert finite == {"test/acc": 0.5}
    assert non_finite == {"test/loss": "inf", "val/loss": "nan"}
    assert json.loads(json.dumps(non_finite, allow_nan=False))  # strict JSON


def test_a_finished_run_lists_no_non_finite_metrics(make_cfg) -> None:
    cfg = make_cfg()
    run(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert summary["non_finite_metrics"] == {} and "test/loss" in summary["metrics"]


FINE_TUNE_OR_KEEP_LAST = (
    "To fine-tune from it now (its backbone, a new head): model.backbone.weights={best} without ckpt_path; "
    "to be able to resume a finished run next time: callbacks.model_checkpoint.keep_last=true"
)


def test_continuing_a_finished_run_says_how_to_fine_tune_and_how_to_keep_last(make_cfg) -> None:
    """best.ckpt holds weights only and a clean end deletes last.ckpt: every way of asking to continue such a
    run ends in one line that names the override that does work now, and the one for next time."""
    brief = ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false")
    first = make_cfg(*brief, out="first")
    run(first)
    out = Path(first.paths.output_dir)
    best = out / "checkpoints" / "best.ckpt"
    assert not (out / "checkpoints" / "last.ckpt").exists()
    advice = FINE_TUNE_OR_KEEP_LAST.format(best=best)
    weights_only = f"{best} holds weights only (no optimizer state), so training cannot continue from it. {advice}"
    finished = (
        f"{out} finished cleanly and its last.ckpt (the only checkpoint with optimizer state) was deleted then, "
        f"so training cannot continue from it. {advice}"
    )
    cases = {
        f"ckpt_path={best}": weights_only,
        f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}": finished,
        f"ckpt_path={out}": finished,
    }
    for override, message in cases.items():
        with pytest.raises(UserError) as raised:
            run(make_cfg(*brief, override, out="again"))
        assert str(raised.value) == message, override
    with pytest.raises(UserError) as raised:  # ckpt_path=last, re-run into the finished run's own directory
        run(make_cfg(*brief, "ckpt_path=last", out="first"))
    assert str(raised.value) == finished
    assert not (Path(first.paths.output_dir).parent / "again" / "metrics.json").exists()


def test_the_advised_fine_tune_loads_the_best_backbone(make_cfg) -> None:
    """What the error advises is true: ``model.backbone.weights=<best.ckpt>`` starts a run from its backbone."""
    import torch

    from transferlab.runner import build

    brief = ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false")
    first = make_cfg(*brief, out="first")
    run(first)
    best = Path(first.paths.output_dir) / "checkpoints" / "best.ckpt"
    tuned = make_cfg(*brief, f"model.backbone.weights={best}", out="tuned")
    datamodule = build(tuned.data, "data")
    model = build(tuned.model, "model", **datamodule.task_args())
    stored = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    backbone = {k: v for k, v in stored.items() if k.startswith("backbone.")}
    assert backbone and all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())
    run(tuned)
    assert json.loads((Path(tuned.paths.output_dir) / "metrics.json").read_text())["epochs"] == 1


def test_a_weights_only_checkpoint_without_backbone_points_to_eval(make_cfg, checkpoints) -> None:
    """A denoiser has no backbone to load by path: the error offers what does work with its weights."""
    from conftest import TINY_MODELS

    best = checkpoints["denoise"]
    with pytest.raises(UserError) as raised:
        run(make_cfg(*TINY_MODELS["denoise"], f"ckpt_path={best}", "trainer.max_epochs=2", tiny=False))
    assert str(raised.value) == (
        f"{best} holds weights only (no optimizer state), so training cannot continue from it. Its weights still "
        f"serve tl-eval and tl-predict: ckpt_path={best}; to be able to resume a finished run next time: "
        "callbacks.model_checkpoint.keep_last=true"
    )
