"""ClassificationTask: fine-tune modes, loss, metrics and what it logs."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from conftest import fit_briefly
from transferlab.train import run
from transferlab.utils.compile import CompiledOrEager
from transferlab.utils.errors import UserError


def build(make_cfg, *overrides: str):
    cfg = make_cfg(*overrides)
    datamodule = instantiate(cfg.data)
    return cfg, datamodule, instantiate(cfg.model, **datamodule.task_args())


def fit(model, datamodule, epochs: int = 1, steps: int = 3) -> None:
    fit_briefly(model, datamodule, epochs, steps)


def batchnorm_stats(module: nn.Module) -> list[torch.Tensor]:
    return [
        t.clone() for m in module.modules() if isinstance(m, nn.BatchNorm2d) for t in (m.running_mean, m.running_var)
    ]


def test_linear_probe_freezes_weights_and_batchnorm_statistics(make_cfg) -> None:
    _, dm, model = build(make_cfg, "model.backbone.name=resnet18", "model.finetune.mode=linear_probe")
    weights = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    stats = batchnorm_stats(model.backbone)
    head = model.head[-1].weight.detach().clone()
    fit(model, dm, epochs=2)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, weights[key]), key  # includes running_mean/var and num_batches_tracked
    assert all(torch.equal(a, b) for a, b in zip(stats, batchnorm_stats(model.backbone)))
    assert not torch.equal(head, model.head[-1].weight)
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_full_finetune_moves_batchnorm_statistics(make_cfg) -> None:
    """The counterpart of the probe test: the same check does detect moving statistics."""
    _, dm, model = build(make_cfg, "model.backbone.name=resnet18")
    stats = batchnorm_stats(model.backbone)
    fit(model, dm)
    assert not all(torch.equal(a, b) for a, b in zip(stats, batchnorm_stats(model.backbone)))


def test_gradual_unfreezes_at_the_given_epoch_with_its_own_lr(make_cfg) -> None:
    _, dm, model = build(
        make_cfg,
        "model.finetune.mode=gradual",
        "model.finetune.unfreeze_at_epoch=1",
        "model.finetune.backbone_lr_mult=0.1",
        "model.optimizer.lr=0.01",
        "model.scheduler=null",
    )
    first = model.backbone.features[0][0].weight.detach().clone()
    fit(model, dm, epochs=1)
    assert torch.equal(first, model.backbone.features[0][0].weight)  # epoch 0: head only
    optimizer = model.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"head": 0.01, "backbone": pytest.approx(0.001)}

    _, dm, model = build(make_cfg, "model.finetune.mode=gradual", "model.finetune.unfreeze_at_epoch=1")
    first = model.backbone.features[0][0].weight.detach().clone()
    fit(model, dm, epochs=2)
    assert not torch.equal(first, model.backbone.features[0][0].weight)  # epoch 1: backbone trains


def test_bad_finetune_mode_is_a_user_error(make_cfg) -> None:
    cfg = make_cfg("model.finetune.mode=probe")
    with pytest.raises(Exception) as err:
        instantiate(cfg.model, num_classes=10)
    assert "must be one of full, linear_probe, gradual" in str(err.value)


def test_label_smoothing_is_used_in_the_loss(make_cfg) -> None:
    _, _, model = build(make_cfg, "model.label_smoothing=0.2")
    logits, targets = torch.randn(6, 10), torch.arange(6)
    torch.testing.assert_close(model.loss(logits, targets), F.cross_entropy(logits, targets, label_smoothing=0.2))
    assert not torch.isclose(model.loss(logits, targets), F.cross_entropy(logits, targets))


def test_num_classes_comes_from_the_data(make_cfg) -> None:
    _, _, model = build(make_cfg)
    assert model.head[-1].out_features == 10 and model.class_names[0] == "disc"
    with pytest.raises(Exception, match="at least 2 classes"):
        instantiate(make_cfg().model, num_classes=1)


def test_metrics_and_confusion_matrix_reach_tensorboard(make_cfg) -> None:
    cfg = make_cfg("trainer.max_epochs=2", "trainer.log_every_n_steps=1")
    run(cfg)
    out = Path(cfg.paths.output_dir)
    events = EventAccumulator(str(out), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"val/acc", "val/acc_top5", "val/loss", "train/loss_step", "test/acc", "val/acc_class/disc"} <= scalars
    assert {"val/confusion_matrix", "test/confusion_matrix"} <= images
    assert len(events.Images("val/confusion_matrix")) == 2  # one per validation epoch, none for the sanity check
    assert (out / "checkpoints" / "best.ckpt").is_file() and not (out / "checkpoints" / "last.ckpt").exists()
    assert not list(out.glob("version_*"))


def test_mixup_and_cutmix_train_on_soft_targets(make_cfg) -> None:
    _, dm, model = build(make_cfg, "model.mixup_alpha=0.4", "model.cutmix_alpha=1.0")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    targets = torch.tensor([0, 1, 2, 3])
    mixed, soft = model.batch_mix(images.float(), targets)
    assert mixed.shape == images.shape and soft.shape == (4, 10)
    torch.testing.assert_close(soft.sum(dim=-1), torch.ones(4))
    assert (soft > 0).sum() > 4  # labels really are mixed
    fit(model, dm)  # and a training step runs on them
    with pytest.raises(Exception, match="must be >= 0"):
        build(make_cfg, "model.mixup_alpha=-1")


def test_gradual_under_ddp_asks_for_unused_parameter_search(make_cfg) -> None:
    _, _, model = build(make_cfg, "model.finetune.mode=gradual")
    model.trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(UserError, match="trainer.strategy=ddp_find_unused_parameters_true"):
        model.setup("fit")
    model.trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", logger=False)
    model.setup("fit")


def test_compile_and_channels_last_settings_reach_the_model(make_cfg) -> None:
    _, _, model = build(make_cfg, "model.compile=default", "model.channels_last=true", "model.head_dropout=0.3")
    model.configure_model()
    assert isinstance(model.forward, CompiledOrEager)  # the whole forward, compiled in place: same state_dict keys
    assert all(not k.startswith("_orig_mod") for k in model.state_dict())
    assert model.normalize(torch.zeros(2, 3, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    assert model.head[0].p == 0.3
    with pytest.raises(Exception, match="model.compile must be one of"):
        build(make_cfg, "model.compile=fastest")


def write_stripes(root: Path, seed: int = 0) -> None:
    """An easy two-class ImageFolder: noisy horizontal vs vertical stripes of random period and phase."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", 40), ("val", 20)):
        for cls in ("horizontal", "vertical"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                period, phase = int(rng.integers(4, 9)), int(rng.integers(0, 9))
                line = ((np.arange(32) + phase) // (period // 2)) % 2 * 200 + rng.integers(0, 40)
                image = np.tile(line, (32, 1)) if cls == "vertical" else np.tile(line[:, None], (1, 32))
                noisy = np.clip(image + rng.normal(0, 20, (32, 32)), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(folder / f"{i}.png")


@pytest.mark.slow
def test_a_classifier_learns_an_easy_task_well_above_chance(make_cfg, tmp_path: Path) -> None:
    """From scratch, 15 steps: held-out accuracy on stripes ≥ 0.9 (chance 0.5); a model that does not learn
    (no gradient step, shuffled targets, a broken loss) stays near 0.5."""
    import json

    write_stripes(tmp_path / "stripes")
    cfg = make_cfg(
        "data=imagefolder",
        f"data.root={tmp_path / 'stripes'}",
        "data.image_size=32",
        "data.num_workers=0",
        "data.batch_size=8",
        "model.backbone.name=resnet18",
        "model.backbone.weights=null",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        "logger=none",
        tiny=False,
    )
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["metrics"]
    assert metrics["test/acc"] >= 0.9, metrics
