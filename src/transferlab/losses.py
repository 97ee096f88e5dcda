"""Losses for image-to-image tasks: perceptual (feature) loss, Gram style loss and total variation.

The perceptual and style losses compare activations of a frozen *loss network*: a backbone from
`backbones.build_backbone` (VGG-16/19 classically, any torchvision model works) cut at named layers with
``torchvision.models.feature_extraction.create_feature_extractor``. VGG layers can be named the way the
papers do (``relu1_2``, ``relu4_1``, …); other models use torchvision's graph node names (``layer2``).
Images enter in [0, 1]; the network applies ImageNet normalisation itself, stays in eval mode and never
gets gradients to its weights (gradients still flow to the input images).

Libraries: torchmetrics' LPIPS is a metric over fixed networks with learned linear layers that are downloaded on
first use (impossible offline); these losses train with any backbone's layers and the weights a user has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from transferlab.backbones import InputNormalize, build_backbone
from transferlab.utils.errors import UserError, closest


def vgg_layer_names(features: nn.Sequential) -> dict[str, str]:
    """Paper names of a VGG ``features`` stack: ``relu{block}_{index}`` → torchvision node ``features.N``."""
    names, block, relu = {}, 1, 0
    for index, layer in enumerate(features):
        if isinstance(layer, nn.MaxPool2d):
            block, relu = block + 1, 0
        elif isinstance(layer, nn.ReLU):
            relu += 1
            names[f"relu{block}_{relu}"] = f"features.{index}"
    return names


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as float32, or as itself when it is float32/float64 already (half precision is raised)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Channel correlations ``F Fᵀ / (C·H·W)`` of (N, C, H, W) features: texture statistics without layout.

    At least float32, outside autocast: the style loss is the small difference of two Gram matrices, which a
    bfloat16 product (mixed precision) rounds to ~3 significant digits before subtracting."""
    n, c, h, w = features.shape
    flat = at_least_float32(features.reshape(n, c, h * w))
    with torch.autocast(features.device.type, enabled=False):
        return flat @ flat.transpose(1, 2) / (c * h * w)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV: mean absolute difference of vertically and horizontally neighbouring pixels (summed), in
    float32 (a bfloat16 output under mixed precision would otherwise be averaged and returned in bfloat16)."""
    images = at_least_float32(images)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return dx + dy


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """A differentiable L1: ``mean(sqrt((pred - target)² + eps²))`` (robust to outliers, smooth at zero)."""
    return torch.sqrt((pred - target) ** 2 + eps**2).mean()


PIXEL_LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss, "charbonnier": charbonnier}


def pixel_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The pixel loss called `name` (l1 | l2 | charbonnier)."""
    if name not in PIXEL_LOSSES:
        hint = closest(name, PIXEL_LOSSES)
        raise UserError(f"unknown pixel loss '{name}'.{hint} Use one of {', '.join(PIXEL_LOSSES)}")
    return PIXEL_LOSSES[name]


def mean_std(features: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel spatial mean and standard deviation, (N, C, 1, 1) each (AdaIN's style statistics), in float32
    whatever the features' precision: a variance of bfloat16 activations is a difference of rounded squares."""
    features = at_least_float32(features)
    mean = features.mean(dim=(2, 3), keepdim=True)
    std = (features.var(dim=(2, 3), keepdim=True, unbiased=False) + eps).sqrt()
    return mean, std


class LossNetwork(nn.Module):
    """A frozen backbone returning activations of named layers for [0, 1] RGB images."""

    def __init__(self, name: str, weights: str | None, layers: Sequence[str]) -> None:
        super().__init__()
        if not layers:
            raise UserError("the loss network needs at least one layer name, e.g. [relu2_2]")
        body = build_backbone(name, weights).body
        aliases = vgg_layer_names(body.features) if name.startswith("vgg") else {}
        nodes = set(get_graph_node_names(body)[1])
        self.layers = list(dict.fromkeys(layers))
        return_nodes = {}
        for layer in self.layers:
            node = aliases.get(layer, layer)
            if node not in nodes and not any(n.startswith(node + ".") for n in nodes):  # a module: its output
                known = list(aliases) or sorted(nodes)
                raise UserError(
                    f"loss network '{name}' has no layer '{layer}'.{closest(layer, known)} "
                    f"Use one of {', '.join(known[:8])}, …"
                )
            return_nodes[node] = layer
        self.body = create_feature_extractor(body, return_nodes=return_nodes)
        self.requires_grad_(False)
        self.normalize = InputNormalize()
        self.eval()

    def train(self, mode: bool = True) -> LossNetwork:
        """Always eval: BatchNorm/dropout of the loss network must not change with the task's mode."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.body(self.normalize(images))


def feature_loss(
    features: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], weights: dict[str, float]
) -> torch.Tensor:
    """Perceptual loss: weighted MSE between activations, summed over layers (Johnson et al. 2016)."""
    return sum(w * F.mse_loss(features[layer], targets[layer]) for layer, w in weights.items())  # type: ignore


def style_loss(
    features: dict[str, torch.Tensor], target_grams: dict[str, torch.Tensor], weights: dict[str, float]
) -> torch.Tensor:
    """Gram style loss: weighted MSE between Gram matrices, summed over layers (Gatys et al. 2016).

    ``target_grams[layer]`` is (C, C) or (N, C, C); a (C, C) target is shared by the whole batch.
    """
    total = 0.0
    for layer, weight in weights.items():
        gram = gram_matrix(features[layer])
        total = total + weight * F.mse_loss(gram, target_grams[layer].expand_as(gram))
    return total  # type: ignore[return-value]


class PerceptualLoss(nn.Module):
    """Feature loss on a frozen loss network, ready to add to a pixel loss (e.g. for restoration)."""

    def __init__(self, network: str, weights: str | None, layers: Sequence[str]) -> None:
        super().__init__()
        self.net = LossNetwork(network, weights, layers)
        self.layer_weights = {layer: 1.0 for layer in self.net.layers}

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = self.net(target)
        return feature_loss(self.net(pred), target_features, self.layer_weights)
