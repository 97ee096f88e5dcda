"""Build any torchvision classification model by name, with weights from wherever the user has them.

A backbone is a torchvision model whose classification head (its last ``nn.Linear``) was replaced by
``nn.Identity``, so it maps images to feature vectors; tasks put their own head on top. Source weights
(`weights`) can be:

* ``null`` — random initialisation;
* a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``, …) — downloaded into torch's hub cache,
  or read from there when the file was placed by hand (the only way on an offline machine);
* a path to a ``.pth``/``.pt`` state dict of the same architecture (torchvision layout);
* a path to a transferlab ``.ckpt`` — the backbone part of a run this framework trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from transferlab.utils.errors import UserError, closest

CHECKPOINT_SUFFIXES = (".ckpt",)
STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin")


@dataclass
class Backbone:
    """A feature extractor plus what a task needs to put a head on it."""

    body: nn.Module
    num_features: int
    name: str


def classification_models() -> list[str]:
    """Names of every classification architecture torchvision ships."""
    return list_models(module=torchvision.models)


def check_name(name: str) -> None:
    """Fail early, with close matches, on a backbone name torchvision does not know."""
    names = classification_models()
    if name not in names:
        raise UserError(
            f"unknown backbone '{name}'.{closest(name, names)} "
            f"Any torchvision classification model works: {', '.join(names[:6])}, …"
        )


def is_weights_file(weights: str | None) -> bool:
    """Whether `weights` names a file rather than a torchvision weights enum member."""
    if weights is None:
        return False
    return weights.endswith(CHECKPOINT_SUFFIXES + STATE_DICT_SUFFIXES) or os.sep in weights


def build_backbone(name: str, weights: str | None = None, kwargs: dict[str, Any] | None = None) -> Backbone:
    """Build `name` with source `weights` and strip its classification head."""
    check_name(name)
    kwargs = dict(kwargs or {})
    if weights is None:
        model = get_model(name, weights=None, **kwargs)
    elif is_weights_file(weights):
        model = get_model(name, weights=None, **kwargs)
        load_weights_file(model, name, Path(weights).expanduser())
    else:
        model = _build_with_torchvision_weights(name, weights, kwargs)
    head_name, head = find_head(model, name)
    set_submodule(model, head_name, nn.Identity())
    return Backbone(body=model, num_features=head.in_features, name=name)


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


def _build_with_torchvision_weights(name: str, weights: str, kwargs: dict[str, Any]) -> nn.Module:
    enum = get_model_weights(name)
    valid = ["DEFAULT", *enum.__members__]
    if weights not in valid:
        raise UserError(
            f"backbone '{name}' has no weights '{weights}'.{closest(weights, valid)} "
            f"Choose one of {', '.join(valid)}, null, or a path to a .pth/.ckpt file."
        )
    resolved = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    try:
        return get_model(name, weights=resolved, **kwargs)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a truncated download a RuntimeError
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(resolved.url).name
        raise UserError(
            f"could not fetch {name} weights {resolved} ({type(err).__name__}: {_first_line(err)}). "
            f"Offline, download {resolved.url} elsewhere and place it at {cache}, "
            "or pass model.backbone.weights=/path/to/state_dict.pth"
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else "no details"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read the model state dict from a torchvision ``.pth`` or a transferlab ``.ckpt`` (backbone part)."""
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist. Pass an existing .pth/.ckpt path or null")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a file that is not a checkpoint
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


def _backbone_from_checkpoint(blob: Any, path: Path) -> dict[str, torch.Tensor]:
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a Lightning checkpoint (no 'state_dict'); pass a .pth state dict")
    prefix = "backbone."
    extracted = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not extracted:
        raise UserError(f"{path} holds no backbone weights (no '{prefix}*' keys); was it trained by transferlab?")
    return extracted


def load_weights_file(model: nn.Module, name: str, path: Path) -> None:
    """Load a state dict into `model`; the head may differ in size (it is replaced), nothing else may."""
    state = read_state_dict(path)
    head_name, _ = find_head(model, name)
    own = model.state_dict()
    is_head = lambda key: key.startswith(head_name + ".")  # noqa: E731
    missing = [k for k in own if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape and not is_head(k)]
    if missing or unexpected or mismatched:
        problems = {"missing": missing, "unexpected": unexpected, "wrong shape": mismatched}
        detail = "; ".join(f"{kind}: {', '.join(keys[:3])}" for kind, keys in problems.items() if keys)
        raise UserError(f"{path} does not fit backbone '{name}' ({detail}). Pass weights of the same architecture")
    compatible = {k: v for k, v in state.items() if v.shape == own[k].shape}
    model.load_state_dict(compatible, strict=False)
