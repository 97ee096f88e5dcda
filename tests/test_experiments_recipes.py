"""Paper-style recipes: the literal ImageNet ResNet-18 → CIFAR-10 recipe in full mode, the configurable input
normalisation it needs (through training, reloading and export), and the small CNN backbone with its FC head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate

from conftest import fit_briefly, run_cli
from test_data import write_cifar
from transferlab.backbones import build_backbone, build_features
from transferlab.inference import ExportSpec
from transferlab.train import run
from transferlab.trust import open_checkpoint
from transferlab.utils.errors import UserError, find_user_error

HALF = "model.input_norm={mean:[0.5,0.5,0.5],std:[0.5,0.5,0.5]}"
SMALL_CNN = ["model.backbone.name=small_cnn", "model.head_hidden=512"]
BRIEF = ["test=false", "logger=none", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]  # → best.ckpt


# -- the literal recipe, in full mode ---------------------------------------------------------------------------
def test_literal_recipe_runs_in_full_mode_on_cifar_files_and_torchvision_weights(tmp_path: Path) -> None:
    """`experiment=cifar10_resnet18_literal` as a user runs it: CIFAR-10 pickle batches where the README says,
    torchvision ResNet-18 weights from a .pth; one training step, then the test on the official test batch."""
    write_cifar(tmp_path / "data" / "cifar", per_batch=20)
    source = torchvision.models.resnet18(num_classes=1000)  # torchvision's layout, its 1000-way ImageNet head
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    result = run_cli(
        "tl-train",
        "experiment=cifar10_resnet18_literal",
        f"paths.data_dir={tmp_path / 'data'}",
        f"model.backbone.weights={tmp_path / 'resnet18.pth'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "trainer.accelerator=cpu",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "data.num_workers=0",
        "logger=none",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["test/acc"] <= 1.0
    task = open_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt").build_task()
    assert task.hparams.input_norm == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert task.hparams.optimizer["_target_"] == "torch.optim.SGD" and task.hparams.scheduler is None
    assert task.head[-1].out_features == 10
    # one SGD step at lr 0.001 from the .pth: the trunk is still (nearly) the file's weights, not a new init
    torch.testing.assert_close(task.backbone.conv1.weight, source.conv1.weight, atol=1e-2, rtol=0)


def test_literal_recipe_says_each_protocol_value(make_cfg) -> None:
    cfg = make_cfg("experiment=cifar10_resnet18_literal", tiny=False)
    assert (cfg.data.image_size, cfg.data.batch_size, cfg.trainer.max_epochs) == (32, 100, 10)
    assert [t._target_.rsplit(".", 1)[-1] for t in cfg.data.augment.transforms] == [
        "RandomHorizontalFlip",
        "RandomRotation",
    ]
    assert cfg.data.augment.transforms[1].degrees == 10
    opt = cfg.model.optimizer
    assert (opt._target_, opt.lr, opt.momentum, opt.weight_decay) == ("torch.optim.SGD", 0.001, 0.9, 0.0)
    assert cfg.model.scheduler is None and cfg.model.label_smoothing == 0.0
    assert (cfg.model.backbone.name, cfg.model.finetune.mode) == ("resnet18", "full")


# -- model.input_norm -----------------------------------------------------------------------------------------
def test_input_norm_is_part_of_the_model_through_reload_and_export(make_cfg) -> None:
    """mean = std = 0.5 maps 0 → −1 and 255 → 1 in training, in the reloaded checkpoint and in the export."""
    cfg = make_cfg(HALF, *BRIEF)
    run(cfg)
    extremes = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    task = open_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt").build_task()
    torch.testing.assert_close(task.normalize(extremes), torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2))
    spec: ExportSpec = task.export_module(torch.rand(1, 3, 32, 32))
    torch.testing.assert_close(spec.module[0](extremes.float() / 255), task.normalize(extremes))

    default = instantiate(make_cfg(out="default").model, num_classes=5)  # null: ImageNet's
    red = default.normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))[0, 0, 0, 0]
    torch.testing.assert_close(red, torch.tensor(-0.485 / 0.229))


@pytest.mark.parametrize(
    "value",
    ["{mean:[0.5,0.5],std:[0.5,0.5,0.5]}", "{mean:[0.5,0.5,0.5],std:[0.5,0,0.5]}", "{mean:[0.5,0.5,0.5]}"],
)
def test_bad_input_norm_is_one_line(make_cfg, value: str) -> None:
    cfg = make_cfg(f"model.input_norm={value}")
    with pytest.raises(Exception) as err:  # Hydra's instantiate wraps the UserError
        instantiate(cfg.model, num_classes=5)
    assert "model.input_norm must be" in str(find_user_error(err.value))


# -- the small CNN backbone -----------------------------------------------------------------------------------
def test_small_cnn_is_a_backbone_name_with_a_trunk_sized_from_the_image() -> None:
    for size, features in [(32, 64 * 8 * 8), (64, 64 * 16 * 16)]:
        built = build_backbone("small_cnn", None, {"image_size": size})
        assert built.num_features == features
        assert built.body(torch.zeros(2, 3, size, size)).shape == (2, features)
        assert not any(isinstance(m, torch.nn.Linear) for m in built.body.modules())  # the FC layers are the head
    with pytest.raises(UserError, match="built for 32 px images"):
        build_backbone("small_cnn").body(torch.zeros(1, 3, 64, 64))
    with pytest.raises(UserError, match="no 'imagenet' weights"):
        build_backbone("small_cnn", "imagenet")
    stages = build_features("small_cnn", None, ["features.2", "features.5"])(torch.zeros(1, 3, 32, 32))  # a U-Net's
    assert [tuple(v.shape) for v in stages.values()] == [(1, 32, 16, 16), (1, 64, 8, 8)]


def test_small_cnn_head_has_the_hidden_layer_and_learns_a_fixed_batch(make_cfg) -> None:
    model = instantiate(make_cfg(*SMALL_CNN).model, num_classes=5)
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4096, 512), (512, 5)]
    torch.manual_seed(0)
    images, targets = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.arange(8) % 5
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(15):
        loss = model.loss(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_small_cnn_trunk_transfers_from_its_checkpoint_and_stays_frozen_under_linear_probe(make_cfg) -> None:
    source = make_cfg(*SMALL_CNN, "model.backbone.weights=null", *BRIEF)
    run(source)
    ckpt = Path(source.paths.output_dir) / "checkpoints" / "best.ckpt"
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    target = make_cfg(*SMALL_CNN, f"model.backbone.weights={ckpt}", "model.finetune.mode=linear_probe", out="t")
    datamodule = instantiate(target.data)
    model = instantiate(target.model, **datamodule.task_args())
    trunk = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    assert trunk.keys() == {k.removeprefix("backbone.") for k in trained if k.startswith("backbone.")}
    for key, value in trunk.items():
        torch.testing.assert_close(value, trained[f"backbone.{key}"], msg=key)
    head_before = model.head[1].weight.detach().clone()
    fit_briefly(model, datamodule, steps=2)
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, trunk[key], msg=f"{key} trained under linear_probe")
    assert not torch.equal(head_before, model.head[1].weight)  # the new head did train


# -- the transfer studies in full mode ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("study", "jobs"),
    [
        pytest.param("scratch_vs_transfer", 2),
        pytest.param("finetune_modes", 3, marks=pytest.mark.slow),
        pytest.param("contrast_augmentation", 5, marks=pytest.mark.slow),
        pytest.param("fewshot_transfer", 10, marks=pytest.mark.slow),
    ],
)
def test_transfer_studies_run_in_full_mode_on_cifar_files(tmp_path: Path, study: str, jobs: int) -> None:
    """The README's full-mode command (data=cifar10, files where the README says), every swept configuration of
    seed 0 as a fast_dev_run on CIFAR-10 batches in the official format: no embedded-data key is left behind."""
    write_cifar(tmp_path / "data" / "cifar", per_batch=150)  # contrast_augmentation keeps 50 per class
    result = run_cli(
        "tl-train",
        "-m",
        f"experiment={study}",
        "data=cifar10",
        "data.image_size=64",
        f"paths.data_dir={tmp_path / 'data'}",
        "seed=0",
        "debug=fdr",
        "trainer.accelerator=cpu",
        "data.num_workers=0",
        "logger=none",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(path.read_text()) for path in (tmp_path / "sweep").rglob("metrics.json")]
    assert len(summaries) == jobs
    assert all("test/acc" in summary["metrics"] for summary in summaries)
