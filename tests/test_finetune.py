"""Fine-tune modes: which epochs freeze the backbone, what `prepare` freezes, and the optimizer param groups
(head at the base LR, backbone in its own group at LR × backbone_lr_mult, frozen parameters left out)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from transferlab.finetune import MODES, Finetune
from transferlab.utils.errors import UserError


def nets() -> tuple[nn.Module, nn.Module]:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), nn.Linear(4, 2)


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_defaults() -> None:
    assert MODES == ("full", "linear_probe", "gradual")
    assert Finetune() == Finetune("full", 1.0, 1)
    assert Finetune.from_config(None) == Finetune() == Finetune.from_config({})
    assert Finetune.from_config({"mode": "gradual", "backbone_lr_mult": 0.1, "unfreeze_at_epoch": 3}) == Finetune(
        "gradual", 0.1, 3
    )


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"mode": "frozen"}, "model.finetune.mode must be one of full, linear_probe, gradual, got 'frozen'"),
        ({"backbone_lr_mult": -0.1}, "model.finetune.backbone_lr_mult must be >= 0, got -0.1"),
        ({"unfreeze_at_epoch": -1}, "model.finetune.unfreeze_at_epoch must be >= 0, got -1"),
        (
            {"mode": "full", "lr_mult": 1, "epochs": 2},
            "unknown model.finetune keys ['epochs', 'lr_mult']; use mode, backbone_lr_mult, unfreeze_at_epoch, "
            "freeze_transferred",
        ),
        (
            {"mode": "linear_probe", "freeze_transferred": True},
            "model.finetune.freeze_transferred=true needs mode=full, got mode=linear_probe (linear_probe freezes "
            "the whole backbone already; gradual would unfreeze the transferred layers)",
        ),
    ],
)
def test_bad_settings_are_user_errors(cfg: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        Finetune.from_config(cfg)
    assert str(err.value) == message


def test_boundary_values_are_allowed() -> None:
    assert Finetune(backbone_lr_mult=0.0).backbone_lr_mult == 0.0
    assert Finetune(mode="gradual", unfreeze_at_epoch=0).backbone_frozen(0) is False


@settings(max_examples=50, deadline=None)
@given(mode=st.sampled_from(MODES), unfreeze=st.integers(0, 20), epoch=st.integers(0, 40))
def test_backbone_frozen_truth_table(mode: str, unfreeze: int, epoch: int) -> None:
    frozen = Finetune(mode=mode, unfreeze_at_epoch=unfreeze).backbone_frozen(epoch)
    expected = {"full": False, "linear_probe": True, "gradual": epoch < unfreeze}[mode]
    assert frozen is expected


def test_gradual_unfreezes_exactly_at_its_epoch() -> None:
    gradual = Finetune(mode="gradual", unfreeze_at_epoch=2)
    assert [gradual.backbone_frozen(e) for e in range(4)] == [True, True, False, False]
    assert Finetune(mode="gradual").backbone_frozen(0) and not Finetune(mode="gradual").backbone_frozen(1)


@pytest.mark.parametrize("mode", MODES)
def test_prepare_freezes_only_a_linear_probe(mode: str) -> None:
    backbone, head = nets()
    Finetune(mode=mode).prepare(backbone)
    assert all(p.requires_grad is (mode != "linear_probe") for p in backbone.parameters())
    assert all(p.requires_grad for p in head.parameters())


@settings(max_examples=50, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    lr=st.floats(1e-6, 1.0),
    mult=st.one_of(st.just(0.0), st.floats(1e-3, 10.0)),
)
def test_param_groups(mode: str, lr: float, mult: float) -> None:
    backbone, head = nets()
    finetune = Finetune(mode=mode, backbone_lr_mult=mult)
    finetune.prepare(backbone)
    groups = finetune.param_groups(backbone.parameters(), head.parameters())
    assert groups[0]["name"] == "head" and "lr_scale" not in groups[0]
    assert ids(groups[0]["params"]) == ids(head.parameters()) and len(groups[0]["params"]) == 2
    if mode == "linear_probe" or mult == 0:  # nothing of the backbone can train: no group for it
        assert len(groups) == 1
    else:
        assert len(groups) == 2 and groups[1]["name"] == "backbone"
        assert groups[1]["lr_scale"] == mult
        assert ids(groups[1]["params"]) == ids(backbone.parameters()) and len(groups[1]["params"]) == 4
    optimizer = torch.optim.SGD(groups, lr=lr)  # a valid optimizer spec: every parameter in at most one group
    assert optimizer.param_groups[0]["lr"] == lr


def test_param_groups_leave_out_parameters_without_gradients() -> None:
    backbone, head = nets()
    backbone[1].requires_grad_(False)  # frozen BatchNorm affine, say
    head.bias.requires_grad_(False)
    groups = Finetune(backbone_lr_mult=0.5).param_groups(backbone.parameters(), head.parameters())
    assert ids(groups[0]["params"]) == {id(head.weight)}
    assert ids(groups[1]["params"]) == ids(backbone[0].parameters()) and groups[1]["lr_scale"] == 0.5
    backbone.requires_grad_(False)
    assert [g["name"] for g in Finetune().param_groups(backbone.parameters(), head.parameters())] == ["head"]


def test_gradual_backbone_has_its_group_from_the_start() -> None:
    """The backbone group exists while it is frozen, so the LR schedule covers it before it unfreezes."""
    backbone, head = nets()
    finetune = Finetune(mode="gradual", backbone_lr_mult=0.1, unfreeze_at_epoch=5)
    finetune.prepare(backbone)
    assert finetune.backbone_frozen(0)
    finetune.apply(backbone, 0)  # frozen: no gradients...
    assert not any(p.requires_grad for p in backbone.parameters())
    groups = finetune.param_groups(backbone.parameters(), head.parameters())
    assert [g["name"] for g in groups] == ["head", "backbone"]  # ...yet its group is there
    finetune.apply(backbone, 5)
    assert all(p.requires_grad for p in backbone.parameters())
