"""Where the Hydra configs live, for source checkouts and installed wheels alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transferlab.utils.resolvers import register_resolvers

register_resolvers()  # whoever finds the configs can also resolve their ${tl.…} interpolations

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def config_dir() -> Path:
    """The `conf/` directory: shipped inside the wheel, or at the top of a source checkout."""
    for candidate in (PACKAGE_DIR / "conf", PACKAGE_DIR.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"transferlab configs not found next to {PACKAGE_DIR}; reinstall the package")


def to_plain(cfg: Any) -> Any:
    """Resolve a config into plain dicts/lists, so it pickles into checkpoints as safe containers."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_list(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys (``model.backbone.name``), as TensorBoard's HPARAMS tab wants."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
