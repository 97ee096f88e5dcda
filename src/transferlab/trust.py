"""A config read from a file is data, never code.

`tl-train` writes the resolved run config into every checkpoint, and `tl-eval`, `tl-predict` and resume
read it back. Hydra's ``instantiate`` calls whatever ``_target_`` names, so a crafted file could name
``torch.load`` (which unpickles), ``builtins.eval`` or ``subprocess.run`` and run code the moment it is
rebuilt. This module is the one path from a file's config to an object: every ``_target_`` anywhere in the
tree (nested, partial, inside ``_args_`` lists) must be on `ALLOWED_TARGETS` — transferlab's own classes
and the library classes its shipped configs use — or the user must have named it on the command line
(``trusted_targets=[…]``). A file can never extend the list.

Checkpoints are opened once: the bytes are read, loaded with ``weights_only=True``, checked, and the task is
rebuilt from those same bytes, so the file cannot change between the check and the use.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from transferlab.constants import CKPT_PATH_HINT
from transferlab.utils.errors import UserError

TASK_TARGETS = frozenset(
    {
        "transferlab.tasks.classification.ClassificationTask",
        "transferlab.tasks.restoration.RestorationTask",
        "transferlab.tasks.style_transfer.StyleTransferTask",
        "transferlab.tasks.style_transfer.AdaINTask",
    }
)
# Networks (``model.net``): any torch.nn.Module class defined in a module of the `transferlab.nets` package, so
# a network added there (docs/architecture.md) needs no edit here. Building one only allocates layers.
NETWORK_PACKAGE = "transferlab.nets."

_TORCHVISION_TRANSFORMS = [
    "AutoAugment",
    "AugMix",
    "CenterCrop",
    "ColorJitter",
    "Compose",
    "ElasticTransform",
    "GaussianBlur",
    "GaussianNoise",
    "Grayscale",
    "Identity",
    "Normalize",
    "Pad",
    "RandAugment",
    "RandomAdjustSharpness",
    "RandomAffine",
    "RandomApply",
    "RandomAutocontrast",
    "RandomChoice",
    "RandomCrop",
    "RandomEqualize",
    "RandomErasing",
    "RandomGrayscale",
    "RandomHorizontalFlip",
    "RandomInvert",
    "RandomOrder",
    "RandomPerspective",
    "RandomPhotometricDistort",
    "RandomPosterize",
    "RandomResize",
    "RandomResizedCrop",
    "RandomRotation",
    "RandomSolarize",
    "RandomVerticalFlip",
    "Resize",
    "ToDtype",
    "ToImage",
    "TrivialAugmentWide",
]
_TORCH_OPTIMIZERS = [
    "ASGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
]
_TORCH_SCHEDULERS = [
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LinearLR",
    "MultiStepLR",
    "OneCycleLR",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "StepLR",
]

# Everything a stored transferlab config may name. Each entry is a class or function whose construction
# only allocates objects from its (plain) arguments: none loads files as code, evaluates strings or
# starts processes.
ALLOWED_TARGETS = frozenset(
    {
        *TASK_TARGETS,
        "transferlab.data.cifar.CIFARDataModule",
        "transferlab.data.imagefolder.ImageFolderDataModule",
        "transferlab.data.photos.PhotoDataModule",
        "transferlab.data.shapes.ShapesDataModule",
        *(
            f"transferlab.data.degradations.{name}"
            for name in (
                [
                    "Degrade",
                    "GaussianNoise",
                    "PoissonNoise",
                    "GaussianBlur",
                    "MotionBlur",
                    "Downscale",
                    "JPEG",
                    "BoxMask",
                    "BrushMask",
                ]
            )
        ),
        "transferlab.optim.warmup_cosine",
        "torch.nn.Identity",
        *(f"torchvision.transforms.v2.{name}" for name in _TORCHVISION_TRANSFORMS),
        *(f"torch.optim.{name}" for name in _TORCH_OPTIMIZERS),
        *(f"torch.optim.lr_scheduler.{name}" for name in _TORCH_SCHEDULERS),
    }
)


def _walk(tree: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every (dotted key, value) in a nested dict/list tree, the containers themselves included."""
    yield path, tree
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from _walk(value, f"{path}[{i}]")


def check_untrusted(tree: Any, source: str, trusted: Iterable[str] = (), key: str = "") -> None:
    """Refuse `tree` (read from `source`) unless every ``_target_`` in it is allowed.

    Interpolations (``${…}``) are refused too: stored configs are resolved, and a resolver such as
    ``oc.decode`` could turn a harmless-looking string into a new ``_target_`` after this check.
    """
    allowed = ALLOWED_TARGETS | frozenset(trusted)
    for where, value in _walk(to_plain_tree(tree), key):
        if isinstance(value, str) and "${" in value:
            raise UserError(
                f"{source}: {where} holds an interpolation ({value[:60]!r}); configs read from files must be "
                "fully resolved. Re-create the file with tl-train"
            )
        if not isinstance(value, dict) or "_target_" not in value:
            continue
        target = value["_target_"]
        if not isinstance(target, str) or (target not in allowed and not is_network_class(target)):
            raise UserError(
                f"{source}: {where + '.' if where else ''}_target_={target!r} is not a target transferlab builds "
                "from a file's config. If you trust this file and that callable, add "
                f"'trusted_targets=[{target}]' to the command line"
            )


def is_network_class(target: str) -> bool:
    """Whether `target` is a network class defined in the `transferlab.nets` package (importing transferlab's
    own modules runs no code from the file)."""
    module_name, _, name = target.rpartition(".")
    if not module_name.startswith(NETWORK_PACKAGE) or not name.isidentifier():
        return False
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    cls = getattr(module, name, None)
    return isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls.__module__ == module_name


def to_plain_tree(tree: Any) -> Any:
    """Plain dicts/lists without resolving anything (OmegaConf containers are converted unresolved)."""
    if isinstance(tree, DictConfig | ListConfig):
        return OmegaConf.to_container(tree, resolve=False)
    return tree


def checked_task_class(target: Any, source: str, trusted: Iterable[str] = ()) -> type:
    """The transferlab task class a checkpoint names (only `TASK_TARGETS` and user-trusted task classes)."""
    from hydra.utils import get_class

    from transferlab.tasks.base import TransferTask

    allowed = TASK_TARGETS | frozenset(trusted)
    if not isinstance(target, str) or target not in allowed:
        raise UserError(
            f"{source}: model._target_={target!r} is not a transferlab task ({', '.join(sorted(TASK_TARGETS))}). "
            f"If you trust this file, add 'trusted_targets=[{target}]' to the command line"
        )
    cls = get_class(target)
    if not (isinstance(cls, type) and issubclass(cls, TransferTask)):
        raise UserError(f"{source}: model._target_={target} is not a transferlab task (a TransferTask subclass)")
    return cls


@dataclass(frozen=True)
class CheckedCheckpoint:
    """A transferlab checkpoint whose stored config and hyper-parameters passed `check_untrusted`."""

    path: Path
    data: bytes  # the bytes that were checked: everything below is built from these, the file is not re-read
    config: dict[str, Any]
    trusted: tuple[str, ...]
    resumable: bool = True  # holds the optimizer state (last.ckpt), not just weights (best.ckpt)
    has_backbone: bool = False  # has ``backbone.*`` weights: what ``model.backbone.weights=<this file>`` loads

    def build_task(self, **kwargs: Any) -> Any:
        """Rebuild the trained task (weights included); source weights are not re-fetched."""
        cls = checked_task_class(self.config["model"].get("_target_"), str(self.path), self.trusted)
        return cls.load_from_checkpoint(
            io.BytesIO(self.data), map_location="cpu", weights_only=True, load_source_weights=False, **kwargs
        )

    def mismatch(self, model: torch.nn.Module, target: str) -> str | None:
        """Why these weights cannot be loaded into `model` (built from config target `target`), or None."""
        stored = self.config["model"].get("_target_")
        if stored != target:
            return f"it holds a {str(stored).rsplit('.', 1)[-1]}, this config builds a {target.rsplit('.', 1)[-1]}"
        blob = torch.load(io.BytesIO(self.data), map_location="cpu", weights_only=True)
        state = blob.get("state_dict", {}) if isinstance(blob, dict) else {}
        for name, tensor in model.state_dict().items():
            if name not in state:
                return f"it has no parameter {name} (another architecture)"
            if tuple(state[name].shape) != tuple(tensor.shape):
                return f"parameter {name} has shape {list(state[name].shape)} there, {list(tensor.shape)} here"
        return None

    def build_datamodule(self, preprocessing: Any = None) -> Any:
        """The datamodule of the run that wrote the checkpoint, following `preprocessing` (the task's
        `backbones.Preprocessing`) where its config leaves the eval resize to the weights."""
        from transferlab.runner import build

        datamodule = build(OmegaConf.create(self.config["data"]), "data")
        datamodule.follow_weights(preprocessing)
        return datamodule


def open_checkpoint(path: Path, trusted: Iterable[str] = ()) -> CheckedCheckpoint:
    """Read a transferlab checkpoint as data and check everything in it that could be instantiated."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist. {CKPT_PATH_HINT}")
    data = path.read_bytes()
    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types; weights_only refuses anything but data
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {first}): not a checkpoint tl-train wrote. "
            f"{CKPT_PATH_HINT}"
        ) from err
    if isinstance(blob, dict) and upgrade_legacy(blob):  # rebuilt from the upgraded data, never the file
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        data = buffer.getvalue()
    info = blob.get("transferlab") if isinstance(blob, dict) else None
    config = info.get("config") if isinstance(info, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise UserError(f"{path} was not written by tl-train (no transferlab run config inside)")
    trusted = tuple(trusted)
    source = f"checkpoint {path}"
    checked_task_class(config["model"].get("_target_"), source, trusted)
    check_untrusted(config.get("data"), source, trusted, key="data")
    check_untrusted(config["model"], source, trusted, key="model")
    check_untrusted(blob.get("hyper_parameters"), source, trusted, key="hyper_parameters")
    resumable = "optimizer_states" in blob
    state = blob.get("state_dict")
    has_backbone = isinstance(state, dict) and any(str(key).startswith("backbone.") for key in state)
    return CheckedCheckpoint(path, data, config, trusted, resumable=resumable, has_backbone=has_backbone)


# -- checkpoints of earlier releases ------------------------------------------------------------------------
# Until networks were chosen by config, restoration models named theirs with ``net.arch`` (the U-Net's encoder
# and decoder sat on the task) and both style-transfer methods were one task with ``method``. Such checkpoints
# are upgraded in memory when opened: renamed keys only, nothing is executed.
LEGACY_NETWORKS = {
    "dncnn": "transferlab.nets.dncnn.DnCNN",
    "edsr": "transferlab.nets.edsr.EDSR",
    "unet": "transferlab.nets.unet.UNet",
}
LEGACY_STYLE_NETWORKS = {
    "johnson": (
        "transferlab.tasks.style_transfer.StyleTransferTask",
        "transferlab.nets.transformer_net.TransformerNet",
    ),
    "adain": ("transferlab.tasks.style_transfer.AdaINTask", "transferlab.nets.adain.AdaINDecoder"),
}
LEGACY_UNET_LAYERS = ["relu", "layer1", "layer2", "layer3"]


def _upgrade_model(model: dict[str, Any], target: str | None) -> bool:
    """Upgrade one model config or hyper-parameter dict in place; whether it was a legacy one."""
    net = model.get("net")
    if target == "transferlab.tasks.restoration.RestorationTask" and isinstance(net, dict) and "arch" in net:
        arch = net.pop("arch")
        model["net"] = {"_target_": LEGACY_NETWORKS.get(arch, str(arch)), **net}
        if arch == "unet" and isinstance(model.get("backbone"), dict):
            model["backbone"].setdefault("layers", LEGACY_UNET_LAYERS)
        return True
    if target == "transferlab.tasks.style_transfer.StyleTransferTask" and "method" in model:
        method = model.pop("method")
        task, network = LEGACY_STYLE_NETWORKS.get(method, (target, None))
        if "_target_" in model:
            model["_target_"] = task
        if method == "johnson":
            model.pop("adain_layer", None)  # the one-class task took it for both methods
        model["net"] = {"_target_": network, **(net or {})}
        return True
    return False


def upgrade_legacy(blob: dict[str, Any]) -> bool:
    """Bring a checkpoint of an earlier release to today's config and parameter names (in place)."""
    info = blob.get("transferlab")
    config = info.get("config") if isinstance(info, dict) else None
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict):
        return False
    target = model.get("_target_")
    if not _upgrade_model(model, target):
        return False
    hparams = blob.get("hyper_parameters")
    if isinstance(hparams, dict):
        _upgrade_model(hparams, target)
    state = blob.get("state_dict")
    if isinstance(state, dict) and model["net"]["_target_"] == LEGACY_NETWORKS["unet"]:
        renamed = {f"net.{key}" if key.startswith(("backbone.", "decoder.")) else key: v for key, v in state.items()}
        blob["state_dict"] = renamed
    return True
