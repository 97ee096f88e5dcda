"""Losses against values computed by hand on tiny tensors; the loss network is frozen and eval-only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from torch import nn

from transferlab.losses import (
    LossNetwork,
    PerceptualLoss,
    charbonnier,
    feature_loss,
    gram_matrix,
    mean_std,
    pixel_loss,
    style_loss,
    total_variation,
    vgg_layer_names,
)
from transferlab.utils.config import config_dir
from transferlab.utils.errors import UserError


def test_gram_matrix_by_hand() -> None:
    # One image, 2 channels of 2 pixels: F = [[1, 2], [3, 4]] → F Fᵀ = [[5, 11], [11, 25]], / (C·H·W = 4).
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)
    torch.testing.assert_close(gram_matrix(features), torch.tensor([[[1.25, 2.75], [2.75, 6.25]]]))


def test_total_variation_by_hand() -> None:
    image = torch.tensor([[0.0, 1.0], [2.0, 4.0]]).view(1, 1, 2, 2)
    # vertical |2-0|, |4-1| → mean 2.5; horizontal |1-0|, |4-2| → mean 1.5
    assert total_variation(image).item() == pytest.approx(4.0)
    assert total_variation(torch.ones(1, 3, 4, 4)).item() == 0.0


def test_style_loss_by_hand() -> None:
    features = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 2)}
    target = {"a": torch.zeros(2, 2)}
    # mean of squared Gram entries: (1.5625 + 2·7.5625 + 39.0625) / 4 = 13.9375; weighted by 2
    assert style_loss(features, target, {"a": 2.0}).item() == pytest.approx(2 * 13.9375)


def test_feature_loss_by_hand() -> None:
    features = {"a": torch.tensor([1.0, 2.0]).view(1, 2, 1, 1), "b": torch.zeros(1, 1, 1, 1)}
    targets = {"a": torch.tensor([0.0, 0.0]).view(1, 2, 1, 1), "b": torch.ones(1, 1, 1, 1)}
    # layer a: (1 + 4) / 2 = 2.5 (weight 1); layer b: 1 (weight 0.5)
    assert feature_loss(features, targets, {"a": 1.0, "b": 0.5}).item() == pytest.approx(3.0)


def test_pixel_losses_by_hand() -> None:
    pred, target = torch.tensor([0.0, 3.0]), torch.tensor([1.0, 1.0])
    assert pixel_loss("l1")(pred, target).item() == pytest.approx(1.5)
    assert pixel_loss("l2")(pred, target).item() == pytest.approx(2.5)
    assert charbonnier(pred, target, eps=0.0).item() == pytest.approx(1.5)
    assert charbonnier(pred, target, eps=1.0).item() == pytest.approx((2**0.5 + 5**0.5) / 2)
    with pytest.raises(UserError, match="unknown pixel loss 'l3'"):
        pixel_loss("l3")


def test_mean_std_by_hand() -> None:
    mean, std = mean_std(torch.tensor([1.0, 3.0]).view(1, 1, 1, 2), eps=0.0)
    assert mean.item() == pytest.approx(2.0) and std.item() == pytest.approx(1.0)


def test_style_statistics_under_bf16_autocast_equal_float32() -> None:
    """Mixed precision runs the loss inside bf16 autocast: a bfloat16 Gram product (or TV/AdaIN statistics kept in
    bfloat16) rounds to ~3 digits, and the style loss is a small difference of such matrices."""
    features = torch.relu(torch.randn(2, 32, 16, 16, generator=torch.Generator().manual_seed(0))).bfloat16()
    target = gram_matrix(features.float()[:1] * 1.01)
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).bfloat16()  # a bf16 network output
    expected = {
        "gram": gram_matrix(features.float()),
        "style": style_loss({"a": features.float()}, {"a": target}, {"a": 1.0}),
        "tv": total_variation(image.float()),
        "std": mean_std(features.float())[1],
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = {
            "gram": gram_matrix(features),
            "style": style_loss({"a": features}, {"a": target}, {"a": 1.0}),
            "tv": total_variation(image),
            "std": mean_std(features)[1],
        }
    for name, value in got.items():
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_vgg_layer_names_follow_the_papers() -> None:
    from torchvision.models import vgg16, vgg19

    names16, names19 = vgg_layer_names(vgg16().features), vgg_layer_names(vgg19().features)
    assert names16["relu1_2"] == "features.3" and names16["relu4_3"] == "features.22"
    assert names19["relu4_1"] == "features.20" and names19["relu5_4"] == "features.35"


def test_loss_network_is_frozen_eval_and_normalises() -> None:
    net = LossNetwork("vgg16", None, ["relu1_1", "relu2_2"])
    nn.Sequential(net).train()  # a parent switching to train mode leaves the loss network in eval
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    out = net(image)
    assert out["relu1_1"].shape == (1, 64, 16, 16) and out["relu2_2"].shape == (1, 128, 8, 8)
    out["relu2_2"].sum().backward()
    assert image.grad is not None and all(p.grad is None for p in net.parameters())
    # ImageNet normalisation happens inside: the first conv sees (x - mean) / std.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    manual = torch.relu(net.body.get_submodule("features.0")((image.detach() - mean) / std))
    torch.testing.assert_close(net(image.detach())["relu1_1"], manual)


def test_loss_network_reads_pretrained_weights_file(tmp_path: Path) -> None:
    from torchvision.models import vgg16

    source = vgg16()
    path = tmp_path / "vgg16.pth"
    torch.save(source.state_dict(), path)
    net = LossNetwork("vgg16", str(path), ["relu1_1"])
    torch.testing.assert_close(net.body.get_submodule("features.0").weight, source.features[0].weight)


def test_loss_network_other_backbones_and_bad_layers() -> None:
    net = LossNetwork("resnet18", None, ["layer1"])
    assert net(torch.rand(1, 3, 32, 32))["layer1"].shape == (1, 64, 8, 8)
    with pytest.raises(UserError, match="has no layer 'relu9_9'"):
        LossNetwork("vgg16", None, ["relu9_9"])


def test_perceptual_loss_is_zero_for_identical_images_and_positive_otherwise() -> None:
    loss = PerceptualLoss("vgg16", None, ["relu1_2"])
    image = torch.rand(2, 3, 16, 16)
    assert loss(image, image).item() == pytest.approx(0.0)
    assert loss(image, image.flip(-1)).item() > 0


# -- charbonnier: the formula, exactly, where ε and ε² differ -------------------------------------------------
def reference_charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float) -> float:
    d = (pred.double() - target.double()).flatten().tolist()
    return sum((x * x + eps * eps) ** 0.5 for x in d) / len(d)


@pytest.mark.parametrize("eps", [1e-3, 0.05, 0.5, 2.0])
def test_charbonnier_is_mean_sqrt_d2_plus_eps2(eps: float) -> None:
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 3, 8, 8, generator=generator), torch.rand(2, 3, 8, 8, generator=generator)
    value = charbonnier(pred, target, eps=eps).item()
    assert value == pytest.approx(reference_charbonnier(pred, target, eps), rel=1e-5)
    # with ε instead of ε² the value would be mean(sqrt(d² + ε)): far off at every ε above
    assert value != pytest.approx(reference_charbonnier(pred, target, eps**0.5), rel=1e-3)


def test_charbonnier_default_eps_is_1e_3() -> None:
    image = torch.rand(1, 3, 4, 4)
    assert charbonnier(image, image).item() == pytest.approx(1e-3, rel=1e-4)  # sqrt(0 + ε²) = ε
    assert pixel_loss("charbonnier")(image, image).item() == pytest.approx(1e-3, rel=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=16, unique=True).map(torch.tensor),
    eps=st.floats(1e-3, 3.0),
)
def test_charbonnier_properties(values: torch.Tensor, eps: float) -> None:
    pred, target = values, values.flip(0)
    l1 = F.l1_loss(pred, target).item()
    loss = charbonnier(pred, target, eps=eps).item()
    assert loss == pytest.approx(reference_charbonnier(pred, target, eps), rel=1e-5, abs=1e-6)
    assert l1 - 1e-5 <= loss <= l1 + eps + 1e-5  # between L1 and L1 + ε
    assert charbonnier(target, pred, eps=eps).item() == pytest.approx(loss, rel=1e-6)  # symmetric


# -- properties of the other losses ---------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 4), h=st.integers(1, 4), w=st.integers(1, 4), seed=st.integers(0, 999))
def test_gram_matrix_properties(n: int, c: int, h: int, w: int, seed: int) -> None:
    features = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gram = gram_matrix(features)
    assert gram.shape == (n, c, c)
    torch.testing.assert_close(gram, gram.transpose(1, 2))
    assert torch.linalg.eigvalsh(gram).min() >= -1e-9  # positive semi-definite
    flat = features.reshape(n, c, h * w)
    torch.testing.assert_close(gram, torch.einsum("ncp,ndp->ncd", flat, flat) / (c * h * w))
    # layout-free: shuffling pixels (the same way in every channel) keeps the Gram matrix
    order = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(gram_matrix(flat[..., order].reshape(n, c, h, w)), gram)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(2, 6), w=st.integers(2, 6), shift=st.floats(-5, 5), seed=st.integers(0, 999))
def test_total_variation_properties(h: int, w: int, shift: float, seed: int) -> None:
    image = torch.rand(1, 2, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    tv = total_variation(image)
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean()
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs().mean()
    torch.testing.assert_close(tv, dx + dy)
    torch.testing.assert_close(total_variation(image + shift), tv)  # shift invariant
    torch.testing.assert_close(total_variation(3 * image), 3 * tv)  # absolutely homogeneous
    torch.testing.assert_close(total_variation(image.transpose(-1, -2)), tv)  # anisotropic: dx and dy alike


def test_total_variation_counts_both_directions_separately() -> None:
    rows = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]).view(1, 1, 2, 3)  # changes only vertically
    assert total_variation(rows).item() == pytest.approx(1.0)
    assert total_variation(rows.transpose(-1, -2)).item() == pytest.approx(1.0)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 5), w=st.integers(2, 5), seed=st.integers(0, 999))
def test_mean_std_matches_population_statistics(h: int, w: int, seed: int) -> None:
    features = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mean, std = mean_std(features)
    assert mean.shape == std.shape == (2, 3, 1, 1)
    torch.testing.assert_close(mean[..., 0, 0], features.mean(dim=(2, 3)))
    expected = (features.var(dim=(2, 3), unbiased=False) + 1e-5).sqrt()  # the default ε is 1e-5
    torch.testing.assert_close(std[..., 0, 0], expected)


def test_style_loss_shares_a_single_target_gram_and_sums_layers() -> None:
    features = {"a": torch.ones(2, 1, 1, 2), "b": torch.zeros(2, 2, 1, 1)}
    # layer a: Gram of [1, 1] is 2 / 2 = 1 for both images; target 0 → MSE 1. Layer b: Gram 0, target 1 → 1.
    targets = {"a": torch.zeros(1, 1), "b": torch.ones(2, 2, 2)}
    assert style_loss(features, targets, {"a": 1.0, "b": 3.0}).item() == pytest.approx(4.0)
    assert style_loss(features, targets, {"a": 0.5}).item() == pytest.approx(0.5)


# -- configuration the loss network and the perceptual loss take --------------------------------------------
def test_loss_network_and_perceptual_loss_as_shipped() -> None:
    """The shipped perceptual settings (model/base/restoration.yaml): VGG-16 at relu2_2 (Johnson et al.),
    weight 1, ImageNet statistics as non-persistent buffers."""
    shipped = OmegaConf.load(config_dir() / "model" / "base" / "restoration.yaml").model.perceptual
    net = LossNetwork(shipped.network, shipped.weights, shipped.layers)
    assert net.layers == ["relu2_2"] and net(torch.rand(1, 3, 16, 16))["relu2_2"].shape == (1, 128, 8, 8)
    assert len([m for m in net.body.modules() if isinstance(m, nn.Conv2d)]) == 4  # VGG's first two blocks
    assert not any(key.startswith("normalize.") for key in net.state_dict())  # constants: never in a checkpoint
    loss = PerceptualLoss(shipped.network, shipped.weights, shipped.layers)
    assert loss.net.layers == ["relu2_2"] and loss.layer_weights == {"relu2_2": 1.0}
    pred, target = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    expected = F.mse_loss(loss.net(pred)["relu2_2"], loss.net(target)["relu2_2"])
    torch.testing.assert_close(loss(pred, target), expected)


def test_perceptual_loss_reads_its_weights_and_layers(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    source = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    loss = PerceptualLoss("resnet18", str(path), ["layer1", "layer1", "relu"])  # duplicates kept once
    assert loss.net.layers == ["layer1", "relu"] and loss.layer_weights == {"layer1": 1.0, "relu": 1.0}
    torch.testing.assert_close(loss.net.body.get_submodule("conv1").weight, source.conv1.weight)


def test_loss_network_errors_list_what_exists() -> None:
    from torchvision.models.feature_extraction import get_graph_node_names

    from transferlab.backbones import build_backbone

    with pytest.raises(UserError) as err:
        LossNetwork("vgg16", None, [])
    assert str(err.value) == "the loss network needs at least one layer name, e.g. [relu2_2]"
    with pytest.raises(UserError) as err:
        LossNetwork("vgg16", None, ["relu9_9"])
    first = "relu1_1, relu1_2, relu2_1, relu2_2, relu3_1, relu3_2, relu3_3, relu4_1"
    assert str(err.value).endswith(f"Use one of {first}, …")
    with pytest.raises(UserError) as err:
        LossNetwork("resnet18", None, ["layer9"])
    nodes = sorted(get_graph_node_names(build_backbone("resnet18", None).body)[1])
    assert str(err.value).startswith("loss network 'resnet18' has no layer 'layer9'. Did you mean")
    assert str(err.value).endswith(f"Use one of {', '.join(nodes[:8])}, …")


def test_unknown_pixel_loss_suggests_and_lists_the_losses() -> None:
    with pytest.raises(UserError) as err:
        pixel_loss("l3")
    assert str(err.value) == "unknown pixel loss 'l3'. Did you mean l2, l1? Use one of l1, l2, charbonnier"
