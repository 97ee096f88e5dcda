"""What every transferlab task shares: optimizer/schedule from config, fine-tune freezing, device-side
input preparation, epoch logging and image grids, the inference interface `tl-predict` calls, and
checkpoints whose hyper-parameters are plain containers.

A task subclass writes `shared_step` (the loss of a batch, logging its metrics), for `tl-predict`
`predictor`, and for `tl-export` `export_module`; everything else here works for any network. The network's
pretrained part (if any) is what `pretrained_part` returns: the fine-tune modes freeze exactly that, by
switching its gradients off.

Tasks receive their nested configs (`optimizer`, `scheduler`, …) un-instantiated (``_recursive_: false``)
and store them resolved with `save_hyperparameters`, so a checkpoint holds only dicts, lists and numbers
and loads under ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from pytorch_lightning.plugins.precision import MixedPrecision
from pytorch_lightning.strategies import DDPStrategy
from torch import nn

from transferlab.backbones import InputNormalize, Preprocessing
from transferlab.finetune import Finetune
from transferlab.loggers import log_image_rows
from transferlab.upstream.lightning_ddp_kwargs import ddp_kwargs
from transferlab.utils.checks import refuse_cuda_graph_accumulation
from transferlab.utils.compile import compile_forward, cudagraph_step_begin
from transferlab.utils.config import to_plain
from transferlab.utils.errors import UserError, describe

if TYPE_CHECKING:
    from transferlab.inference import ExportSpec, PredictOptions, Predictor

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")
GRID_SAMPLES = 4  # images per row of the validation grid a task shows


def _ddp_without_unused_parameter_search(trainer: pl.Trainer | None) -> bool:
    if trainer is None:
        return False
    strategy = trainer.strategy
    return isinstance(strategy, DDPStrategy) and not ddp_kwargs(strategy).get("find_unused_parameters")


def fused_if_supported(make_optimizer: Any, device: torch.device, clips_gradients: bool = False) -> dict[str, Any]:
    """``fused=True`` for a CUDA optimizer that has a fused kernel, unless the config chose fused/foreach itself.

    A fused Adam/AdamW/SGD step is one kernel instead of a few per parameter tensor: less host time per step.
    A fused step unscales gradients inside itself, so Lightning's mixed-precision plugin refuses to clip its
    gradients (they would be clipped while still scaled); when the trainer clips (`clips_gradients`) the
    multi-tensor ``foreach`` step is chosen instead, nearly as fast and clippable.
    """
    if device.type != "cuda":
        return {}
    chosen = getattr(make_optimizer, "keywords", {}) or {}
    if "fused" in chosen or "foreach" in chosen:
        return {}
    target = getattr(make_optimizer, "func", make_optimizer)
    try:
        accepts = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}
    choice = "foreach" if clips_gradients else "fused"
    return {choice: True} if choice in accepts else {}


def check_fused_clipping(make_optimizer: Any, trainer: pl.Trainer) -> None:
    """Refuse a configured ``fused=True`` optimizer that the trainer would clip under mixed precision: Lightning
    would stop at the first step with a traceback (a fused step unscales its gradients only inside itself)."""
    chosen = getattr(make_optimizer, "keywords", {}) or {}
    if chosen.get("fused") and trainer.gradient_clip_val and isinstance(trainer.precision_plugin, MixedPrecision):
        raise UserError(
            f"model.optimizer.fused=true cannot clip gradients (trainer.gradient_clip_val={trainer.gradient_clip_val}) "
            f"under trainer.precision={trainer.precision}: a fused step unscales its gradients inside itself. "
            "Remove model.optimizer.fused (a clipped run then uses foreach) or trainer.gradient_clip_val"
        )


class TransferTask(pl.LightningModule, abc.ABC):
    """Base LightningModule: a network with an optional pretrained part (possibly frozen) and new parts.

    Networks trained from scratch (DnCNN, EDSR, TransformerNet) have no pretrained part (`pretrained_part`
    returns ``None``): everything trains at the full learning rate and the fine-tune mode has nothing to freeze.
    """

    def __init__(
        self,
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        finetune: dict[str, Any] | None = None,
        compile: str | None = None,
        channels_last: bool | None = None,
        input_norm: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if compile not in COMPILE_MODES:
            raise UserError(f"model.compile must be one of {COMPILE_MODES}, got '{compile}'")
        self.optimizer_cfg = to_plain(optimizer)
        self.scheduler_cfg = to_plain(scheduler)
        self._check_optimizer_config()
        self.finetune = Finetune.from_config(to_plain(finetune))
        self.compile_mode = compile
        self.channels_last = channels_last
        self._channels_last_on: bool | None = None  # decided in configure_model, once the device is known
        self._loss_sums: dict[str, dict[str, torch.Tensor]] = {}  # stage → loss term → Σ value·batch (device)
        self._loss_counts: dict[str, int] = {}
        self.input_normalize = InputNormalize.from_config(to_plain(input_norm), scale=255)  # null: ImageNet's
        self.preprocessing: Preprocessing | None = None  # what the pretrained part expects (`expected_preprocessing`)
        self._grid: tuple[str, list[torch.Tensor]] | None = None
        self.run_record: dict[str, Any] | None = None  # set by tl-train: {"config": …, "version": …}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the run's resolved config in every checkpoint (tl-eval, tl-predict, transfer and the trust check
        read it). A module hook, not a callback's: Lightning skips callbacks' hooks for the weights-only
        ``best.ckpt``."""
        if self.run_record is not None:
            checkpoint["transferlab"] = self.run_record

    @classmethod
    def expected_preprocessing(cls, model: dict[str, Any]) -> Preprocessing | None:
        """What this task's pretrained part expects of its inputs, from its (resolved) ``model`` config, before the
        task is built: tl-train hands it to the datamodule (`follow_weights`) and to the task as
        ``preprocessing=<record>``, so a task that returns one takes that argument. None: nothing to follow."""
        return None

    # -- what subclasses write ---------------------------------------------------------------------
    @abc.abstractmethod
    def shared_step(self, batch: Any, stage: str, batch_idx: int) -> torch.Tensor:
        """Loss of `batch` in `stage` ("train", "val" or "test"), logging the stage's metrics."""

    @abc.abstractmethod
    def predictor(self, prepare: Callable[[torch.Tensor], torch.Tensor], options: PredictOptions) -> Predictor:
        """What `tl-predict` runs on each file: `prepare` makes a decoded uint8 RGB file into an input exactly as
        the run's test images were made (its datamodule's `file_transform`)."""

    @abc.abstractmethod
    def export_module(self, example: torch.Tensor) -> ExportSpec:
        """The stand-alone inference model `tl-export` writes, built from this task's own (trained) modules.

        `example` is one prepared input file as `tl-predict` would feed it ([0, 1] float, (1, 3, H, W)): a
        model whose input size is fixed keeps that size, the others take any."""

    def pretrained_part(self) -> nn.Module | None:
        """The pretrained module the fine-tune modes freeze and give their own LR; None when all is new."""
        return None

    def transferred_layers(self) -> list[nn.Module]:
        """The modules that took source weights (``model.finetune.freeze_transferred`` freezes them): the whole
        pretrained part unless a task transfers only some of its layers."""
        pretrained = self.pretrained_part()
        return [] if pretrained is None else [pretrained]

    # -- hooks subclasses use ----------------------------------------------------------------------
    @property
    def backbone_frozen(self) -> bool:
        return self.pretrained_part() is not None and self.finetune.backbone_frozen(self.current_epoch)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 255] float) images → normalised float (ImageNet's mean/std unless the task was given
        ``input_norm``), in the memory format the model runs."""
        out = self.input_normalize(images)
        channels_last = self._channels_last_on if self._channels_last_on is not None else self._use_channels_last()
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    def show_images(self, stage: str, batch_idx: int, tag: str, columns: Callable[[], list[torch.Tensor]]) -> None:
        """Keep the first validation batch's first images, one column per tensor ([0, 1], same size), to log
        as one grid under `tag` when validation ends (not during Lightning's sanity check). `columns` is called
        only for that batch, so preparing what is shown costs nothing on the other steps.

        The images are copied: a view would keep a compiled model's output, whose memory CUDA graphs reuse at the
        next step (and a view of a whole batch would keep all of it alive until the epoch ends)."""
        if stage == "val" and batch_idx == 0:
            self._grid = (tag, [c[:GRID_SAMPLES].detach().clone() for c in columns()])

    # -- Lightning's three entry points share one step function ------------------------------------
    # Each step starts a CUDA-graphs generation (under model.compile=reduce-overhead/max-autotune): the compiled
    # calls of one step (a stylizer and the loss network on its output, AdaIN's two loss-network calls, without
    # gradients in validation) then never overwrite each other's outputs (`transferlab.utils.compile`).
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        cudagraph_step_begin(self.compile_mode)
        return self.shared_step(batch, "train", batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        cudagraph_step_begin(self.compile_mode)
        self.shared_step(batch, "val", batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        cudagraph_step_begin(self.compile_mode)
        self.shared_step(batch, "test", batch_idx)

    # -- logging without per-step host work --------------------------------------------------------
    # Lightning's `self.log` costs ~1 ms of Python per call, and a value logged with ``prog_bar=True`` is
    # copied to the host (a device sync) at every step. So steps only accumulate on the device; epoch means
    # and metrics are logged once per epoch, the training loss per step only on the steps the loggers write
    # (every `trainer.log_every_n_steps`), and nothing with ``prog_bar`` (`callbacks.ProgressBar` shows them).
    def log_losses(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        """Add this batch's loss terms (``loss``, ``loss_<term>``) to the stage's epoch means, on the device."""
        sums = self._loss_sums.setdefault(stage, {})
        for name, value in terms.items():
            weighted = value.detach().float() * batch_size
            sums[name] = sums[name].add_(weighted) if name in sums else weighted
        self._loss_counts[stage] = self._loss_counts.get(stage, 0) + batch_size
        if stage == "train" and self._is_logging_step():
            self.log_dict({f"train/{name}_step": value for name, value in terms.items()}, on_step=True, on_epoch=False)

    def _is_logging_step(self) -> bool:
        """Whether the loggers write this training step (Lightning's own rule: every ``log_every_n_steps``)."""
        every = self.trainer.log_every_n_steps if self._trainer is not None else 1
        return every > 0 and (self.global_step + 1) % every == 0

    def epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        """The stage's accumulated metrics (e.g. ``val/acc``), computed once per epoch and reset; none by default."""
        return {}

    def end_of_epoch(self, stage: str) -> None:
        """After the epoch's scalars are logged: figures (subclasses)."""

    def _log_epoch(self, stage: str) -> None:
        sums, count = self._loss_sums.pop(stage, {}), self._loss_counts.pop(stage, 0)
        values = {f"{stage}/{name}": total / count for name, total in sums.items()} if count else {}
        values.update(self.epoch_metrics(stage))
        # One all-reduce per value per epoch: the cross-rank mean of per-rank loss means and of per-rank counters
        # (train/acc: ranks train on equally many samples); torchmetrics values are synchronised already, and
        # their mean over ranks leaves them as they are.
        if values:
            self.log_dict(values, sync_dist=True)
        self.end_of_epoch(stage)
        if stage == "val" and self._grid is not None:
            tag, columns = self._grid
            self._grid = None
            if not self.trainer.sanity_checking:
                log_image_rows(self, tag, columns)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def _start_epoch(self, stage: str) -> None:
        self._loss_sums.pop(stage, None)
        self._loss_counts.pop(stage, None)

    def on_validation_epoch_start(self) -> None:
        self._start_epoch("val")

    def on_test_epoch_start(self) -> None:
        self._start_epoch("test")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # -- Lightning plumbing ------------------------------------------------------------------------
    def _use_channels_last(self) -> bool:
        if self.channels_last is None:  # auto: channels_last pays off on GPUs (tensor cores), not on CPUs
            device = self.trainer.strategy.root_device if self._trainer is not None else self.device
            return device.type == "cuda"
        return self.channels_last

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._trainer is not None:  # tl-train checked its config; this is for API callers
            refuse_cuda_graph_accumulation(self.compile_mode, self.trainer.accumulate_grad_batches)
        pretrained = self.pretrained_part()
        if pretrained is None:
            return
        self.finetune.prepare(pretrained)
        if self.finetune.freeze_transferred:
            for module in self.transferred_layers():
                module.requires_grad_(False)
        if stage == "fit" and self.finetune.mode == "gradual" and _ddp_without_unused_parameter_search(self._trainer):
            raise UserError(
                "finetune.mode=gradual under DDP needs find_unused_parameters (the frozen backbone gets no "
                "gradients at first). Add trainer.strategy=ddp_find_unused_parameters_true"
            )

    def configure_model(self) -> None:
        self._channels_last_on = self._use_channels_last()  # fixed for the run: no trainer lookup per step
        if self._channels_last_on:
            self.to(memory_format=torch.channels_last)
        if self.compile_mode:
            for module in self.compiled_modules():
                compile_forward(module, self.compile_mode, type(module).__name__)

    def compiled_modules(self) -> list[nn.Module]:
        """What ``model.compile`` compiles: the task's forward (input normalisation, backbone and head in one
        graph, its backward compiled with it), as a hand-written compiled loop compiles its whole model."""
        return [self]

    def train(self, mode: bool = True) -> TransferTask:
        super().train(mode)
        if mode and self.backbone_frozen:  # frozen BatchNorm keeps its running statistics
            self.pretrained_part().eval()
        if mode and self.finetune.freeze_transferred:
            for module in self.transferred_layers():
                module.eval()
        return self

    def on_train_epoch_start(self) -> None:
        pretrained = self.pretrained_part()
        if pretrained is not None:  # gradual unfreezing happens at an epoch boundary
            self.finetune.apply(pretrained, self.current_epoch)
        self.train(True)
        self._start_epoch("train")

    def _check_optimizer_config(self) -> None:
        """Build optimizer and scheduler once on a dummy parameter, so a bad value fails before training."""
        try:
            self._make_optimizer([torch.zeros(1, requires_grad=True)], total_steps=10)
        except (ValueError, TypeError, ImportError, InstantiationException) as err:
            cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
            raise UserError(
                f"invalid model.optimizer/model.scheduler settings: {describe(cause)}. "
                "Check the model.optimizer.* and model.scheduler.* overrides"
            ) from err

    def _make_optimizer(
        self, params: Any, total_steps: int, trainer: pl.Trainer | None = None
    ) -> tuple[torch.optim.Optimizer, dict[str, Any] | None]:
        """The configured optimizer over `params` (groups may carry an ``lr_scale``: their LR is the configured one
        times it), and its LR-scheduler entry for Lightning (or None). With the `trainer` it will run under, the
        step kernel (fused or foreach) suits the trainer's gradient clipping."""
        make_optimizer = instantiate(self.optimizer_cfg)
        clips = trainer is not None and bool(trainer.gradient_clip_val)
        if trainer is not None:
            check_fused_clipping(make_optimizer, trainer)
        optimizer = make_optimizer(params, **fused_if_supported(make_optimizer, self.device, clips))
        for group in optimizer.param_groups:  # before any scheduler records the initial LRs
            group["lr"] *= group.get("lr_scale", 1.0)
        if not self.scheduler_cfg:
            return optimizer, None
        make_scheduler = instantiate(self.scheduler_cfg)
        if "total_steps" in inspect.signature(make_scheduler).parameters:  # per-step schedule over the whole run
            return optimizer, {"scheduler": make_scheduler(optimizer, total_steps=total_steps), "interval": "step"}
        return optimizer, {"scheduler": make_scheduler(optimizer), "interval": "epoch"}

    def configure_optimizers(self) -> Any:
        pretrained = self.pretrained_part()
        backbone = list(pretrained.parameters()) if pretrained is not None else []
        in_backbone = {id(p) for p in backbone}
        groups = self.finetune.param_groups(backbone, [p for p in self.parameters() if id(p) not in in_backbone])
        total_steps = int(self.trainer.estimated_stepping_batches) if self.scheduler_cfg else 0
        optimizer, scheduler = self._make_optimizer(groups, total_steps, self._trainer)
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}
