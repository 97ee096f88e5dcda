"""Fine-tuning schedules shared by every task that puts a new head on a pretrained backbone.

* ``full`` — everything trains; the backbone may get a smaller LR (``backbone_lr_mult``).
* ``linear_probe`` — the backbone never trains: no gradients, and it stays in eval mode so BatchNorm
  running statistics (and dropout) stay exactly as the source weights had them.
* ``gradual`` — the head warms up on a frozen backbone; at ``unfreeze_at_epoch`` the backbone joins.

With ``freeze_transferred`` (mode ``full`` only) the layers that took source weights (all of them, or the first
``model.backbone.transfer_layers``) never train, and their norm layers stay in eval mode: Yosinski et al.'s AnB,
whose ``+`` variant (AnB+) is the default, fine-tuning them.

The backbone always sits in its own optimizer param group (lr × ``backbone_lr_mult``) from the first step,
so an LR schedule covers it whether or not it is frozen yet; while frozen its parameters get no gradient,
and optimizers skip parameters without one.

Libraries: Lightning's BackboneFinetuning adds the backbone's parameter group to the optimizer when it unfreezes and
needs a `backbone` attribute; here every group exists from the start (frozen = requires_grad off), so the optimizer,
its checkpoint and the LR schedule see one fixed set of groups, for any task's `pretrained_part`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from transferlab.utils.errors import UserError

MODES = ("full", "linear_probe", "gradual")


@dataclass(frozen=True)
class Finetune:
    mode: str = "full"
    backbone_lr_mult: float = 1.0
    unfreeze_at_epoch: int = 1
    freeze_transferred: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"model.finetune.mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.backbone_lr_mult < 0:
            raise UserError(f"model.finetune.backbone_lr_mult must be >= 0, got {self.backbone_lr_mult}")
        if self.unfreeze_at_epoch < 0:
            raise UserError(f"model.finetune.unfreeze_at_epoch must be >= 0, got {self.unfreeze_at_epoch}")
        if self.freeze_transferred and self.mode != "full":
            raise UserError(
                f"model.finetune.freeze_transferred=true needs mode=full, got mode={self.mode} (linear_probe "
                "freezes the whole backbone already; gradual would unfreeze the transferred layers)"
            )

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> Finetune:
        unknown = set(cfg or {}) - {"mode", "backbone_lr_mult", "unfreeze_at_epoch", "freeze_transferred"}
        if unknown:
            raise UserError(
                f"unknown model.finetune keys {sorted(unknown)}; use mode, backbone_lr_mult, unfreeze_at_epoch, "
                "freeze_transferred"
            )
        return cls(**(cfg or {}))

    def backbone_frozen(self, epoch: int) -> bool:
        """Whether the backbone is frozen during `epoch`."""
        return self.mode == "linear_probe" or (self.mode == "gradual" and epoch < self.unfreeze_at_epoch)

    def prepare(self, backbone: nn.Module) -> None:
        """One-off set-up: a linear probe's backbone never needs gradients (saves memory, DDP ignores it)."""
        if self.mode == "linear_probe":
            backbone.requires_grad_(False)

    def apply(self, backbone: nn.Module, epoch: int) -> None:
        """Freeze or unfreeze for `epoch` (gradual): a frozen backbone has no gradients, so autograd builds no graph
        through it and the optimizer leaves it alone, whatever network holds it."""
        if self.mode == "gradual":
            backbone.requires_grad_(not self.backbone_frozen(epoch))

    def param_groups(self, backbone: Iterable[nn.Parameter], head: Iterable[nn.Parameter]) -> list[dict[str, Any]]:
        """Head at the optimizer's LR; backbone in its own group, its LR scaled by ``backbone_lr_mult`` (as the
        group's ``lr_scale``, applied once the optimizer has set every group's LR from its config)."""
        groups: list[dict[str, Any]] = [{"params": [p for p in head if p.requires_grad], "name": "head"}]
        # gradual: the backbone's gradients are switched off while frozen, yet its group exists from the start
        backbone_params = [p for p in backbone if p.requires_grad or self.mode == "gradual"]
        if backbone_params and self.backbone_lr_mult > 0:
            groups.append({"params": backbone_params, "name": "backbone", "lr_scale": self.backbone_lr_mult})
        return groups
