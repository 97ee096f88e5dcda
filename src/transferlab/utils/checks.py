"""Types and ranges of the numeric config values, checked before anything is built (no torch needed).

A wrong value found here is one line naming the key, what it must be and what it got; found later it
would be a traceback from deep inside Lightning or a network constructor, after a run directory exists.
Keys are matched as glob patterns against the flattened config; a key a config does not have is skipped,
and so is a value that is still an interpolation (it points at a key that is checked itself).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from transferlab.constants import AUTO_IDLE, CUDA_GRAPH_COMPILE_MODES
from transferlab.upstream import omegaconf_nodes
from transferlab.utils.errors import UserError


@dataclass(frozen=True)
class Number:
    """A number (an integer when `integer`) within ``[low, high]`` (bounds inclusive unless `open_high`)."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    nullable: bool = False
    open_high: bool = False
    meaning: str = ""  # e.g. "-1 = no limit"

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.nullable else "a value (it is required)"
        kind = "an integer" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float) or (self.integer and isinstance(value, float)):
            return kind + self._range() + (" or null" if self.nullable else "")
        too_high = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if (self.low is not None and value < self.low) or too_high:
            return kind + self._range() + (" or null" if self.nullable else "")
        return None

    def _range(self) -> str:
        upper = "<" if self.open_high else "<="
        if self.low is not None and self.high is not None:
            text = f" in [{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        elif self.low is not None:
            text = f" >= {self.low:g}"
        elif self.high is not None:
            text = f" {upper} {self.high:g}"
        else:
            text = ""
        return text + (f" ({self.meaning})" if self.meaning else "")


@dataclass(frozen=True)
class CountOrFraction:
    """Lightning's ``limit_*_batches``/``val_check_interval``: an integer count or a fraction in (0, 1]."""

    min_count: int = 0

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None
        ok_count = isinstance(value, int) and not isinstance(value, bool) and value >= self.min_count
        ok_fraction = isinstance(value, float) and 0.0 <= value <= 1.0 and (self.min_count == 0 or value > 0)
        return None if ok_count or ok_fraction else f"an integer >= {self.min_count} (batches) or a fraction in (0, 1]"


@dataclass(frozen=True)
class OneOf:
    choices: tuple[Any, ...]

    def problem(self, value: Any) -> str | None:
        def same(choice: Any) -> bool:  # `trainer.precision=16` arrives as the integer 16
            if isinstance(choice, bool) or isinstance(value, bool):
                return value is choice
            return str(value) == str(choice)

        return None if any(same(choice) for choice in self.choices) else "one of " + ", ".join(map(str, self.choices))


@dataclass(frozen=True)
class Devices:
    """``trainer.devices``: a positive count, -1 (all), ``auto``, or a list / comma string of device ids."""

    def problem(self, value: Any) -> str | None:
        if value == "auto" or isinstance(value, list | ListConfig):
            return None
        if isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1):
            return None
        if isinstance(value, str) and all(part.strip().isdigit() for part in value.split(",") if part.strip()):
            return None
        return "a positive number of devices, -1 (all), auto, or a list of device ids"


@dataclass(frozen=True)
class Tags:
    """``tags``: a list of short names, each usable as an MLflow tag key and a W&B tag as it is. The prefixes
    ``mlflow.`` and ``transferlab.`` name the tags those two set themselves (run name, sweep group)."""

    NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
    RESERVED = ("mlflow.", "transferlab.")

    def problem(self, value: Any) -> str | None:
        if isinstance(value, list | ListConfig) and all(
            isinstance(tag, str) and self.NAME.fullmatch(tag) and not tag.startswith(self.RESERVED) for tag in value
        ):
            return None
        return (
            "a list of names such as [baseline,lr-scan] (letters, digits, _ . : -, at most 64; a number quoted: "
            "'2024'; none starting with mlflow. or transferlab.)"
        )


@dataclass(frozen=True)
class CpuThreads:
    """``cpu_threads``: a thread count, null (the cores the machine grants) or ``auto_idle`` (the idle ones)."""

    def problem(self, value: Any) -> str | None:
        if (
            value is None
            or value == AUTO_IDLE
            or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
        ):
            return None
        return (
            "an integer >= 1, null (from CPU affinity, cgroup quota and SLURM_CPUS_PER_TASK) or "
            f"{AUTO_IDLE} (the cores idle at the start)"
        )


MISSING = "???"  # a required value nobody gave

Rule = Number | CountOrFraction | OneOf | Devices | Tags | CpuThreads

COUNT = Number(low=1, integer=True)
NON_NEGATIVE = Number(low=0)
FRACTION = Number(low=0, high=1, open_high=True)
PRECISIONS = ("64", "64-true", "32", "32-true", "16", "16-mixed", "16-true", "bf16", "bf16-mixed", "bf16-true")

RULES: dict[str, Rule] = {
    "seed": Number(low=0, integer=True, nullable=True),
    "monitor.mode": OneOf(("min", "max")),
    "train": OneOf((True, False)),
    "test": OneOf((True, False)),
    "verbose": OneOf((True, False)),
    "tags": Tags(),
    # trainer (tl-train, tl-eval)
    "trainer.max_epochs": Number(low=-1, integer=True, nullable=True, meaning="-1 = no limit"),
    "trainer.min_epochs": Number(low=0, integer=True, nullable=True),
    "trainer.max_steps": Number(low=-1, integer=True, meaning="-1 = no limit"),
    "trainer.min_steps": Number(low=0, integer=True, nullable=True),
    "trainer.devices": Devices(),
    "trainer.num_nodes": COUNT,
    "trainer.precision": OneOf(PRECISIONS),
    "trainer.log_every_n_steps": COUNT,
    "trainer.num_sanity_val_steps": Number(low=-1, integer=True, meaning="-1 = all"),
    "trainer.accumulate_grad_batches": COUNT,
    "trainer.gradient_clip_val": Number(low=0, nullable=True),
    "trainer.limit_*_batches": CountOrFraction(),
    "trainer.val_check_interval": CountOrFraction(min_count=1),
    "trainer.check_val_every_n_epoch": Number(low=1, integer=True, nullable=True),
    "trainer.deterministic": OneOf((True, False, "warn")),
    # data
    "data.batch_size": COUNT,
    "data.num_workers": Number(low=0, integer=True, nullable=True, meaning="null = from the CPU threads"),
    "cpu_threads": CpuThreads(),
    "data.image_size": Number(low=8, integer=True),
    "data.patch_size": Number(low=8, integer=True),
    "data.train_size": COUNT,
    "data.test_size": COUNT,
    "data.train_patches": COUNT,
    "data.val_patches": COUNT,
    "data.val_fraction": FRACTION,
    "data.test_fraction": FRACTION,
    "data.examples_per_class": Number(low=1, integer=True, nullable=True, meaning="null = all"),
    "data.seed": Number(low=0, integer=True),
    "data.split_seed": Number(low=0, integer=True),
    "data.on_bad_file": OneOf(("skip", "error")),
    # model
    "model.optimizer.lr": Number(low=1e-12),
    "model.optimizer.weight_decay": NON_NEGATIVE,
    "model.optimizer.momentum": Number(low=0, high=1, open_high=True),
    "model.label_smoothing": FRACTION,
    "model.head_dropout": FRACTION,
    "model.head_hidden": Number(low=1, integer=True, nullable=True, meaning="null = no hidden layer"),
    "model.mixup_alpha": NON_NEGATIVE,
    "model.cutmix_alpha": NON_NEGATIVE,
    "model.finetune.mode": OneOf(("full", "linear_probe", "gradual")),
    "model.finetune.backbone_lr_mult": NON_NEGATIVE,
    "model.finetune.unfreeze_at_epoch": Number(low=0, integer=True),
    "model.scheduler.warmup_fraction": FRACTION,
    "model.*weight": NON_NEGATIVE,
    "model.*_layers.*": NON_NEGATIVE,
    "model.style_size": Number(low=16, integer=True),
    "model.net.res_scale": Number(low=1e-12),
    **{f"model.net.{name}": COUNT for name in ("depth", "channels", "width", "blocks", "res_blocks", "min_channels")},
    "model.metrics.crop_border": Number(low=0, integer=True),
    "model.metrics.data_range": Number(low=1e-12),
    # callbacks
    "callbacks.early_stopping.patience": Number(low=0, integer=True),
    "callbacks.model_checkpoint.save_top_k": Number(low=-1, integer=True, meaning="-1 = all"),
    "callbacks.model_checkpoint.last_every_minutes": NON_NEGATIVE,
    # tl-predict
    "top_k": COUNT,
    "batch_size": COUNT,
    "tile": Number(low=8, integer=True),
    "overlap": Number(low=0, integer=True),
    "on_bad_file": OneOf(("skip", "error")),
    # tl-export
    "format": OneOf(("onnx", "torchscript")),
    "dynamo": OneOf((True, False)),
}


def leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, raw value) of every leaf (`MISSING` for ``???``), skipping interpolations and ``hydra``."""
    for key in node:
        name = f"{prefix}{key}"
        if name == "hydra" or str(key).startswith("_") or OmegaConf.is_interpolation(node, key):
            continue
        if OmegaConf.is_missing(node, key):
            yield name, MISSING
            continue
        child = omegaconf_nodes.raw_child(node, key)
        if isinstance(child, DictConfig):
            if not omegaconf_nodes.is_none(child):
                yield from leaves(child, f"{name}.")
        else:
            yield name, omegaconf_nodes.raw_value(child)


def rule_for(key: str) -> Rule | None:
    """The first rule whose pattern matches `key` (exact names first, then globs in table order)."""
    if key in RULES:
        return RULES[key]
    return next((rule for pattern, rule in RULES.items() if "*" in pattern and fnmatch.fnmatchcase(key, pattern)), None)


def check_values(cfg: DictConfig, hint: Callable[[str], str] | None = None) -> None:
    """Raise `UserError` for the first value outside its rule; `hint(key)` says how to fix it."""
    for key, value in leaves(cfg):
        if value is MISSING:
            raise UserError(f"{key} is required and has no value. Pass {key}=<value> on the command line")
        rule = rule_for(key)
        problem = rule.problem(value) if rule is not None else None
        if problem is not None:
            fix = hint(key) if hint is not None else f"Pass {key}=<value>"
            raise UserError(f"{key} must be {problem}, got {value!r}. {fix}")
    check_relations(cfg)


def check_relations(cfg: DictConfig) -> None:
    """Values that are fine alone but not together."""
    tile, overlap = cfg.get("tile"), cfg.get("overlap")
    if isinstance(tile, int) and isinstance(overlap, int) and tile <= 2 * overlap:
        raise UserError(
            f"tile={tile} is too small for overlap={overlap}: each tile must be larger than twice the overlap. "
            "Raise tile or lower overlap"
        )
    compile_mode = OmegaConf.select(cfg, "model.compile", default=None)
    trainer = cfg.get("trainer")
    if isinstance(trainer, DictConfig):
        low, high = trainer.get("min_epochs"), trainer.get("max_epochs")
        if isinstance(low, int) and isinstance(high, int) and high >= 0 and low > high:
            raise UserError(f"trainer.min_epochs={low} exceeds trainer.max_epochs={high}. Lower min_epochs")
        if trainer.get("sync_batchnorm") is True and compile_mode:
            # SyncBatchNorm gathers statistics with a host sync per layer per step, which breaks the compiled graph
            raise UserError(
                f"trainer.sync_batchnorm=true cannot run with model.compile={compile_mode}: SyncBatchNorm breaks the "
                "compiled graph at every BatchNorm layer. Set trainer.sync_batchnorm=false or model.compile=null"
            )
    refuse_cuda_graph_accumulation(compile_mode, OmegaConf.select(cfg, "trainer.accumulate_grad_batches", default=1))
    if "train" in cfg and "test" in cfg and not (cfg.train or cfg.test):
        raise UserError("both train=false and test=false: nothing to do. Enable one of them")


def refuse_cuda_graph_accumulation(mode: Any, steps: Any) -> None:
    """Refuse gradient accumulation under a CUDA-graph compile mode.

    The compiled backward writes its gradients into the CUDA graphs' memory pool, so the first micro-batch's
    ``.grad`` is overwritten by the next backward instead of summed (torch raises "accessing gradient tensor
    output of CUDAGraphs that has been overwritten" on the GPU). Refused on any device: the config is wrong for
    the GPU it is meant for."""
    if mode in CUDA_GRAPH_COMPILE_MODES and isinstance(steps, int) and steps > 1:
        raise UserError(
            f"model.compile={mode} (CUDA graphs) cannot accumulate gradients (trainer.accumulate_grad_batches="
            f"{steps}): each backward overwrites the previous gradients. Use model.compile=default or "
            "trainer.accumulate_grad_batches=1"
        )
