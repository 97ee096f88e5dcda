"""Task networks that are not torchvision backbones (TransformerNet, AdaIN decoder, DnCNN, U-Net, EDSR), and
how a task builds the one its config names.

A task's network is a nested config (``model.net``) with a ``_target_``, as in lightning-hydra-template and
BasicSR: the task adds what it knows from the data (input channels, up-scale factor, the backbone to build
on, …) to the network's own settings. A network takes only the arguments it declares, so adding one is a
module here plus a YAML file, with no edit to a task (docs/architecture.md).
"""

from __future__ import annotations

import inspect
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from torch import nn

from transferlab.utils.errors import UserError, describe


def network_class(cfg: dict[str, Any] | None, key: str) -> type:
    """The class `cfg` names with its ``_target_`` (a one-line error when there is none or it does not import)."""
    target = (cfg or {}).get("_target_")
    if not isinstance(target, str):
        raise UserError(f"{key} names no network. Set {key}._target_=transferlab.nets.<module>.<Class>")
    try:
        cls = get_class(target)
    except Exception as err:  # hydra wraps the import error in several types
        raise UserError(f"{key}._target_={target} cannot be imported ({describe(err)}). Check the name") from err
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UserError(f"{key}._target_={target} is not a network (a torch.nn.Module subclass)")
    return cls


def takes(cls: type, argument: str) -> bool:
    """Whether the network's constructor declares `argument`."""
    return argument in inspect.signature(cls).parameters


def build_network(cfg: dict[str, Any], key: str, **context: Any) -> nn.Module:
    """Instantiate the network `cfg` names, passing each `context` value the network's constructor declares."""
    cls = network_class(cfg, key)
    declared = inspect.signature(cls).parameters
    given = {name: value for name, value in context.items() if name in declared}
    try:
        return instantiate(cfg, **given, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__ or err
        if isinstance(cause, UserError):
            raise cause from err
        raise UserError(
            f"cannot build {key} ({cfg['_target_']}): {describe(cause)}. Check the {key}.* settings"
        ) from err
