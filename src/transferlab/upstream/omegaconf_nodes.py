"""OmegaConf's ``Container._get_node`` and ``Node._is_none`` / ``Node._value``: a config value without resolving it.

Why: config checks walk every leaf as written (an interpolation left alone, a ``???`` seen as missing, a
``null`` sub-config seen as None); OmegaConf's public access resolves interpolations and raises on ``???``.
Without them: checking a config would fail on the first unresolvable interpolation.
Checked: omegaconf 2.3.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig


def raw_child(node: DictConfig, key: Any) -> Any:
    """The child node of `node` under `key`, not resolved."""
    return node._get_node(key)


def is_none(node: Any) -> bool:
    """Whether the (sub-)config `node` is ``null``."""
    return bool(node._is_none())


def raw_value(node: Any) -> Any:
    """The value of leaf or list `node` as written (a list as a plain list)."""
    return list(node) if isinstance(node, ListConfig) else node._value()
