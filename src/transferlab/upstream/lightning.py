"""Which Lightning package runs transferlab: ``pytorch-lightning`` (``import pytorch_lightning``) or the unified
``lightning`` package (``import lightning.pytorch``), one per process.

Why: both ship the same code under two names, and their classes are distinct objects. A callback or logger of one
is not an instance of the other's base class, so a process must use one only. transferlab's source imports
``pytorch_lightning`` / ``lightning_fabric``; when the unified package is chosen, those names are aliases of
``lightning.pytorch`` / ``lightning.fabric`` (the very same module objects), so one source serves both.

Choice: ``TRANSFERLAB_LIGHTNING=pytorch_lightning`` or ``=lightning``; unset, ``pytorch_lightning`` when it is
installed, else ``lightning``. `select` runs when ``transferlab`` is imported, before anything of Lightning is.
Checked: pytorch-lightning 2.6.6, lightning 2.6.6 (the alias relies on ``lightning.pytorch`` mirroring
``pytorch_lightning`` module for module, which the unified package is built to do).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

ENV = "TRANSFERLAB_LIGHTNING"
CHOICES = ("pytorch_lightning", "lightning")
# standalone package name → its place in the unified package
ALIASES = {"pytorch_lightning": "lightning.pytorch", "lightning_fabric": "lightning.fabric"}


class LightningChoiceError(ImportError):
    """No usable Lightning package for the choice (an ImportError: it is a missing or unusable install)."""


def _installed(name: str) -> bool:
    """Whether top-level package `name` is installed, our own alias not counted."""
    if name in sys.modules and sys.modules[name].__name__ == name:
        return True
    for finder in sys.meta_path:
        if isinstance(finder, _AliasFinder) or not hasattr(finder, "find_spec"):
            continue
        try:
            if finder.find_spec(name, None) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


class _AliasLoader(importlib.abc.Loader):
    """Loads ``pytorch_lightning.x`` as the already importable ``lightning.pytorch.x`` (the same module object)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__  # the import system sets the alias's spec on the module; put its own back
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the target module ran under its own name); only its own ``__spec__`` goes back."""
        module.__spec__ = self.spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        top, _, rest = fullname.partition(".")
        if top not in ALIASES:
            return None
        real = ALIASES[top] + (f".{rest}" if rest else "")
        spec = importlib.util.find_spec(real)
        if spec is None:
            return None
        alias = importlib.machinery.ModuleSpec(
            fullname, _AliasLoader(real), is_package=spec.submodule_search_locations is not None
        )
        return alias


def chosen() -> str:
    """The Lightning package this process uses (see the module docstring); raises LightningChoiceError."""
    wanted = os.environ.get(ENV, "").strip()
    if wanted and wanted not in CHOICES:
        raise LightningChoiceError(
            f"{ENV}={wanted} names no Lightning package. Use {ENV}=pytorch_lightning or lightning"
        )
    if wanted == "lightning" and not _installed("lightning"):
        raise LightningChoiceError(
            f"{ENV}=lightning, but the lightning package is not installed. pip install lightning"
        )
    if wanted == "lightning" or (not wanted and not _installed("pytorch_lightning")):
        if not _installed("lightning"):
            raise LightningChoiceError(
                "neither pytorch-lightning nor lightning is installed. pip install pytorch-lightning"
            )
        return "lightning"
    return "pytorch_lightning"


def select() -> str:
    """Make ``pytorch_lightning`` / ``lightning_fabric`` name the chosen package's modules; return its name.

    Idempotent. A process that already imported the other package's modules keeps them (the alias would give
    it two copies of every class), so the choice must come first: ``import transferlab`` makes it. A wrong
    choice raises LightningChoiceError after installing the default one, so that imports still work until a
    command's preflight reports it in one line.
    """
    try:
        name = chosen()
    except LightningChoiceError:
        if _installed("lightning") and not _installed("pytorch_lightning"):
            _alias()
        raise
    if name == "lightning":
        _alias()
    return name


def _alias() -> None:
    if _aliased():
        return
    if "pytorch_lightning" in sys.modules and sys.modules["pytorch_lightning"].__name__ == "pytorch_lightning":
        raise LightningChoiceError(
            f"{ENV}=lightning, but pytorch_lightning was imported before transferlab. Import transferlab first"
        )
    sys.meta_path.insert(0, _AliasFinder())


def _aliased() -> bool:
    return any(isinstance(finder, _AliasFinder) for finder in sys.meta_path)


def module_name(standalone: str) -> str:
    """The real name of a module given by its standalone name (``pytorch_lightning.loops`` is
    ``lightning.pytorch.loops`` under the unified package): what its loggers and warnings are named after."""
    top, _, rest = standalone.partition(".")
    if not _aliased() or top not in ALIASES:
        return standalone
    return ALIASES[top] + (f".{rest}" if rest else "")
