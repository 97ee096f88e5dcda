"""transferlab: transfer-learning experiments in computer vision on Lightning + Hydra."""

import contextlib
from importlib.metadata import PackageNotFoundError, version

from transferlab.upstream.lightning import LightningChoiceError, select

# pytorch_lightning or the unified lightning package, before anything imports either; a wrong choice is
# reported by a command's preflight, in one line (`transferlab.cli.preflight`)
with contextlib.suppress(LightningChoiceError):
    select()

try:
    __version__ = version("transferlab")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"


def __getattr__(name: str) -> object:
    """``transferlab.train`` / ``evaluate`` / ``predict``: the commands as functions (`transferlab.api`),
    imported on first use so that ``import transferlab`` stays instant."""
    if name in ("train", "evaluate", "predict"):
        import importlib

        return importlib.import_module(f"transferlab.{name}")
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
