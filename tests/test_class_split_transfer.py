"""Yosinski et al.'s class-split transfer study and what it needs: ``data.classes`` (a subset of the classes,
relabelled), layer-wise transfer (``model.backbone.transfer_layers``, ``model.finetune.freeze_transferred``),
a deeper small CNN (``widths``), and the one-command study (embedded and CIFAR-10 full mode)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate

from conftest import fit_briefly, make_data
from test_data import write_cifar
from transferlab.backbones import build_backbone, first_layers, layer_groups
from transferlab.data.imagefolder import ImageFolderDataModule
from transferlab.data.shapes import CLASSES, ShapesDataModule, export_imagefolder
from transferlab.train import run
from transferlab.trust import open_checkpoint
from transferlab.utils.errors import UserError, find_user_error

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "experiments" / "class_split_transfer" / "study.py"
FREEZE = "model.finetune.freeze_transferred"
SHAPES = {"train_size": 200, "test_size": 50, "image_size": 16}


def split_data(dm) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every split's images and labels, in order, through the datamodule's loaders."""
    dm.setup("fit")
    loaders = {"train": dm._loader("train", shuffle=False), "val": dm.val_dataloader(), "test": dm.test_dataloader()}
    return {
        name: tuple(torch.cat(parts) for parts in zip(*[(images, labels) for images, labels in loader], strict=True))
        for name, loader in loaders.items()
    }


# -- data.classes -----------------------------------------------------------------------------------------------
def test_classes_keep_the_listed_classes_in_every_split_relabelled_in_their_order() -> None:
    everything = split_data(make_data(ShapesDataModule, "shapes", **SHAPES))["test"]
    chosen = make_data(ShapesDataModule, "shapes", **SHAPES, classes=["star", "disc"])
    splits = split_data(chosen)
    assert chosen.classes == ["star", "disc"] and chosen.task_args()["class_names"] == ["star", "disc"]
    for name, (_, labels) in splits.items():
        assert set(labels.tolist()) == {0, 1}, name
    images, labels = splits["test"]  # the test split is the official one: exactly its stars and discs
    for new, old in enumerate([CLASSES.index("star"), CLASSES.index("disc")]):
        torch.testing.assert_close(images[labels == new], everything[0][everything[1] == old])
    by_index = split_data(make_data(ShapesDataModule, "shapes", **SHAPES, classes=[CLASSES.index("star"), 0]))
    torch.testing.assert_close(by_index["test"][1], labels)

    few = make_data(ShapesDataModule, "shapes", **SHAPES, classes=["star", "disc"], examples_per_class=3)
    assert split_data(few)["train"][1].bincount().tolist() == [3, 3]


def test_classes_select_files_of_an_image_folder(tmp_path: Path) -> None:
    """File-backed data: a relabelled view, nothing decoded until a sample is read."""
    root = export_imagefolder(tmp_path / "folder", image_size=16, train_per_class=4, val_per_class=2)
    dm = make_data(ImageFolderDataModule, "imagefolder", root=str(root), image_size=16, classes=["ring", "bars"])
    splits = split_data(dm)
    assert dm.classes == ["ring", "bars"]
    assert splits["test"][1].tolist() == [1, 1, 0, 0]  # files in folder order (bars/, ring/), labels in ours
    assert len(splits["train"][1]) + len(splits["val"][1]) == 8


@pytest.mark.parametrize(("classes", "message"), [(["disc", "nope"], "no class 'nope'"), ([0, 0], "twice")])
def test_bad_classes_are_one_line_errors_listing_the_available_ones(classes: list, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        make_data(ShapesDataModule, "shapes", **SHAPES, classes=classes).setup("fit")
    assert "\n" not in str(err.value)
    if "nope" in classes:
        assert ", ".join(CLASSES) in str(err.value)


def test_a_checkpoint_knows_the_kept_class_names(make_cfg) -> None:
    cfg = make_cfg("data.classes=[bars,ring,star]", "test=false", "logger=none", "trainer.limit_train_batches=1")
    run(cfg)
    task = open_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt").build_task()
    assert task.class_names == ["bars", "ring", "star"] and task.head[-1].out_features == 3


# -- the small CNN's depth --------------------------------------------------------------------------------------
def test_small_cnn_widths_set_its_depth_and_keep_the_paper_net_by_default() -> None:
    deep = build_backbone("small_cnn", None, {"widths": [8, 16, 32]})
    assert deep.num_features == 32 * 4 * 4  # widths[-1] · (32 // 2**3)²
    assert deep.body(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    assert len(layer_groups(deep.body)) == 3
    paper = build_backbone("small_cnn").body.state_dict()  # existing checkpoints keep their keys and shapes
    assert {k: tuple(v.shape) for k, v in paper.items()} == {
        "features.0.weight": (32, 3, 3, 3),
        "features.0.bias": (32,),
        "features.3.weight": (64, 32, 3, 3),
        "features.3.bias": (64,),
    }
    with pytest.raises(UserError, match="6 conv blocks needs images of at least 64 px"):
        build_backbone("small_cnn", None, {"widths": [4] * 6})


# -- layer-wise transfer ----------------------------------------------------------------------------------------
def test_layers_are_parametrised_modules_in_order_with_their_norms() -> None:
    groups = layer_groups(build_backbone("resnet18").body)
    assert len(groups) == 20  # 17 convs of the blocks and stem + 3 downsampling convs; the fc head is gone
    assert groups[:2] == [["conv1", "bn1"], ["layer1.0.conv1", "layer1.0.bn1"]]
    assert ["layer2.0.downsample.0", "layer2.0.downsample.1"] in groups


@pytest.fixture
def resnet_source(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision ResNet-18 state dict whose every tensor (BatchNorm statistics too) is unlike a fresh init."""
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)
    torch.save(model.state_dict(), tmp_path / "source.pth")
    return tmp_path / "source.pth", {k: v.clone() for k, v in model.state_dict().items()}


def keys_of(modules: list[str], state: dict[str, torch.Tensor]) -> list[str]:
    return [key for key in state if key.rsplit(".", 1)[0] in modules]


def test_only_the_first_n_layers_take_the_source_weights(resnet_source) -> None:
    path, source = resnet_source
    body = build_backbone("resnet18", str(path), transfer_layers=2).body
    state = body.state_dict()
    copied = keys_of(first_layers(body, 2, "resnet18"), state)
    assert "bn1.running_mean" in copied and "layer1.0.bn1.weight" in copied
    for key in copied:
        torch.testing.assert_close(state[key], source[key], msg=key)
    for key in ("layer1.0.conv2.weight", "layer4.1.conv2.weight", "layer1.0.bn2.running_var"):
        assert not torch.equal(state[key], source[key]), f"{key} was copied"
    everything = build_backbone("resnet18", str(path)).body.state_dict()  # null: every layer, as before
    assert all(torch.equal(everything[k], source[k]) for k in everything)


@pytest.mark.parametrize("n", [0, 21, True])
def test_transfer_layers_out_of_range_says_the_depth(resnet_source, n: int) -> None:
    with pytest.raises(UserError, match=r"has 20 layers .* Use 1\.\.20, or null"):
        build_backbone("resnet18", str(resnet_source[0]), transfer_layers=n)


def test_transfer_layers_without_source_weights_is_an_error(make_cfg) -> None:
    cfg = make_cfg("model.backbone.weights=null", "model.backbone.transfer_layers=1")
    with pytest.raises(Exception) as err:  # Hydra's instantiate wraps the UserError
        instantiate(cfg.model, num_classes=3)
    assert "copies layers of model.backbone.weights, which is null" in str(find_user_error(err.value))


@pytest.mark.parametrize("frozen", [True, False], ids=["AnB", "AnB+"])
def test_transferred_layers_stay_frozen_or_fine_tune(make_cfg, resnet_source, frozen: bool) -> None:
    """AnB: the first n layers keep the source's weights and BatchNorm statistics through training; AnB+: they
    train. The layers above are new either way, and train."""
    path, source = resnet_source
    cfg = make_cfg(
        "model.backbone.name=resnet18",
        f"model.backbone.weights={path}",
        "model.backbone.transfer_layers=3",
        f"model.finetune.freeze_transferred={str(frozen).lower()}",
    )
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, **datamodule.task_args())
    transferred = keys_of(first_layers(model.backbone, 3, "resnet18"), model.backbone.state_dict())
    new_key = "layer1.1.conv1.weight"  # the 4th layer
    assert new_key not in transferred
    new_before = model.backbone.state_dict()[new_key].clone()
    fit_briefly(model, datamodule, steps=2)
    state = model.backbone.state_dict()
    for key in transferred:
        if frozen:
            torch.testing.assert_close(state[key], source[key], msg=f"{key} changed while frozen")
        elif not key.endswith("num_batches_tracked"):
            assert not torch.equal(state[key], source[key]), f"{key} did not fine-tune"
    assert not torch.equal(state[new_key], new_before)  # the new layers train in both
    params = dict(model.backbone.named_parameters())
    assert all(params[k].requires_grad != frozen for k in transferred if k in params)
    assert params[new_key].requires_grad


def test_freeze_transferred_needs_full_mode_and_source_weights(make_cfg) -> None:
    for overrides, message in [
        (["model.finetune.mode=gradual"], "needs mode=full"),
        (["model.backbone.weights=null"], "nothing is transferred"),
    ]:
        cfg = make_cfg("model.finetune.freeze_transferred=true", *overrides)
        with pytest.raises(Exception) as err:
            instantiate(cfg.model, num_classes=3)
        assert message in str(find_user_error(err.value))


# -- the study, as a user runs it ---------------------------------------------------------------------------------
def run_study(tmp_path: Path, *overrides: str) -> Path:
    out = tmp_path / "results"
    command = [sys.executable, str(STUDY), "--tiny", "--work", str(tmp_path / "work"), "--out", str(out), *overrides]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out


def check_results(out: Path) -> None:
    with (out / "report.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    cells = {(r["source"], r[FREEZE].lower(), r["model.backbone.transfer_layers"]) for r in rows}
    assert cells == {(s, f, n) for s in "AB" for f in ("true", "false") for n in ("1", "3")}
    assert all(0.0 <= float(r["test/acc_mean"]) <= 1.0 for r in rows)
    with (out / "base.csv").open() as handle:
        assert sorted(r["half"] for r in csv.DictReader(handle)) == ["A", "B"]
    summary = {line.split("|")[1].strip() for line in (out / "summary.md").read_text().splitlines()}
    assert {"base B", "AnB", "AnB+", "BnB", "BnB+"} <= summary
    assert (out / "class_split_transfer.png").stat().st_size > 0 and (out / "report.png").is_file()


def test_study_puts_each_tl_report_row_under_its_condition(tmp_path: Path) -> None:
    """The figure's and summary's numbers: tl-report's rows (as its CSV spells the values), each under the paper's
    name for its (source, frozen) pair, and base B at n = 0."""
    sys.path.insert(0, str(STUDY.parent))
    import study

    cells = [(s, f, n) for s in "AB" for f in ("True", "False") for n in (1, 2)]
    rows = [f"{n},{f},{s},{0.1 * i + 0.01:.2f},0.0{i}" for i, (s, f, n) in enumerate(cells)]
    header = f"{study.LAYERS},{study.FREEZE},source,test/acc_mean,test/acc_std"
    (tmp_path / "report.csv").write_text("\n".join([header, *rows]) + "\n")
    (tmp_path / "base.csv").write_text("half,test/acc_mean,test/acc_std\nA,0.9,0.01\nB,0.5,nan\n")
    base_b, lines = study.curves(tmp_path / "report.csv", tmp_path / "base.csv")
    assert base_b == (0.5, 0.0)
    assert lines == {
        "AnB": [(1, 0.01, 0.00), (2, 0.11, 0.01)],
        "AnB+": [(1, 0.21, 0.02), (2, 0.31, 0.03)],
        "BnB": [(1, 0.41, 0.04), (2, 0.51, 0.05)],
        "BnB+": [(1, 0.61, 0.06), (2, 0.71, 0.07)],
    }
    text = study.summary(base_b, lines, tmp_path / "summary.md")
    assert "| AnB+ | | 0.210 ± 0.020 | 0.310 ± 0.030 |" in text and "| base B | 0.500 ± 0.000 |" in text


@pytest.mark.slow
def test_study_tiny_runs_end_to_end_on_the_embedded_data(tmp_path: Path) -> None:
    out = run_study(tmp_path)
    check_results(out)
    transfer = next((tmp_path / "work" / "transfer").rglob("best.ckpt"))  # every transfer job learns half B
    assert open_checkpoint(transfer).build_task().class_names == CLASSES[5:]  # classes 5..9, by index


@pytest.mark.slow
def test_study_tiny_runs_in_full_mode_on_cifar_batches(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar", per_batch=40)
    out = run_study(tmp_path, "data=cifar10", f"data.root={tmp_path / 'cifar'}", "data.num_workers=0")
    check_results(out)
    base_a = open_checkpoint(tmp_path / "work" / "base" / "half=A,seed=0" / "checkpoints" / "best.ckpt")
    assert base_a.build_task().class_names == ["airplane", "automobile", "bird", "cat", "deer"]
