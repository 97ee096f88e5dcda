"""The train entry in-process: return value for sweepers, seeding, debug presets, metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
