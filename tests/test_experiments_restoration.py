"""The restoration studies (`experiment=restoration_denoise`, `restoration_deblur_inpaint`): U-Net on a pretrained
encoder vs the same U-Net from scratch vs DnCNN. Embedded mode (the installed ImageNet EfficientNet-Lite0), full
mode (torchvision ResNet-18 from a .pth the user places) and the one-command sweep with its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import TINY_PHOTOS, run_cli
from transferlab.backbones import build_features
from transferlab.report import report
from transferlab.train import run
from transferlab.utils.config import config_dir

STUDIES = ["restoration_denoise", "restoration_deblur_inpaint"]
RESTORERS = ["unet_pretrained", "unet_scratch", "dncnn"]
TINY_RUN = [*(o for o in TINY_PHOTOS if not o.startswith("data=")), "logger=none"]
FULL_MODE = ["encoder.name=resnet18", "encoder.layers=[relu,layer1,layer2,layer3]"]


def model_of(cfg) -> torch.nn.Module:
    datamodule = instantiate(cfg.data)
    return instantiate(cfg.model, **datamodule.task_args())


def test_studies_sweep_what_their_readmes_say_and_state_the_metric() -> None:
    """Each study file sets the metric (channel, crop border) itself and sweeps 3 restorers × 3 seeds."""
    sweeps = {
        "restoration_denoise": ("data.degrade.steps.0.sigma", "15,25,50"),
        "restoration_deblur_inpaint": ("data/degrade", "motion_blur,inpaint_box"),
    }
    for study, (key, values) in sweeps.items():
        raw = OmegaConf.load(config_dir() / "experiment" / f"{study}.yaml")
        assert dict(raw.model.metrics) == {"data_range": 1.0, "channel": "rgb", "crop_border": 0}
        params = raw.hydra.sweeper.params
        assert (params[key], params.restorer, params.seed) == (values, ",".join(RESTORERS), "0,1,2")


def test_restorers_are_the_pretrained_unet_the_same_unet_from_scratch_and_dncnn(make_cfg) -> None:
    """Embedded mode: the pretrained U-Net's encoder holds the installed ImageNet weights, the scratch U-Net is the
    same network randomly initialised at the full LR, DnCNN takes the inpainting mask as a 4th channel."""
    study = ["experiment=restoration_deblur_inpaint", "data/degrade=inpaint_box"]
    built = {r: model_of(make_cfg(*study, f"restorer={r}", tiny=False, out=r)) for r in RESTORERS}
    encoder = make_cfg(*study, tiny=False, out="encoder").encoder
    imagenet = build_features(encoder.name, "imagenet", list(encoder.layers)).state_dict()
    pretrained, scratch = built["unet_pretrained"], built["unet_scratch"]
    assert pretrained.net.backbone.state_dict().keys() == imagenet.keys()
    for key, value in pretrained.net.backbone.state_dict().items():
        torch.testing.assert_close(value, imagenet[key], msg=key)
    weight = next(iter(imagenet))  # the stem conv
    assert scratch.net.backbone.state_dict()[weight].shape == imagenet[weight].shape
    assert not torch.allclose(scratch.net.backbone.state_dict()[weight], imagenet[weight])
    assert (pretrained.finetune.backbone_lr_mult, scratch.finetune.backbone_lr_mult) == (0.1, 1.0)
    assert type(built["dncnn"].net).__name__ == "DnCNN"
    assert built["dncnn"].net.body[0].in_channels == 4  # RGB + mask: the data's channels, as the U-Net gets them


@pytest.mark.parametrize("study", STUDIES)
@pytest.mark.parametrize("restorer", RESTORERS)
def test_embedded_study_runs_a_fast_dev_run(make_cfg, study: str, restorer: str) -> None:
    """Every cell's configuration, as the study runs it (the real ImageNet encoder), trains, validates and tests."""
    cfg = make_cfg(f"experiment={study}", f"restorer={restorer}", "debug=fdr", *TINY_RUN, tiny=False)
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["metrics"]
    assert {"test/psnr", "test/ssim", "test/psnr_input"} <= metrics.keys()


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_full_mode_runs_on_a_torchvision_resnet18_pth(make_cfg, tmp_path: Path, study: str) -> None:
    """Full mode as the README gives it: torchvision ResNet-18 weights from a .pth, the U-Net's encoder cut at the
    README's layers; the weights reach the encoder, and the study's command runs a fast dev run on them."""
    pth = tmp_path / "resnet18-f37072fd.pth"
    source = torchvision.models.resnet18(num_classes=1000)
    torch.save(source.state_dict(), pth)
    full = [*FULL_MODE, f"encoder.weights={pth}"]
    model = model_of(make_cfg(f"experiment={study}", *full, tiny=False))
    torch.testing.assert_close(model.net.backbone.state_dict()["conv1.weight"], source.conv1.weight)
    for restorer in ("unet_pretrained", "dncnn"):
        result = run_cli(
            "tl-train",
            f"experiment={study}",
            f"restorer={restorer}",
            *full,
            "debug=fdr",
            *TINY_RUN,
            f"hydra.run.dir={tmp_path / restorer}",
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "test/psnr" in json.loads((tmp_path / restorer / "metrics.json").read_text())["metrics"]


@pytest.mark.slow
def test_study_is_one_sweep_and_one_report(tmp_path: Path) -> None:
    """`tl-train -m experiment=restoration_deblur_inpaint` (cut to inpainting, one seed, tiny) then `tl-report`:
    one row per restorer, each with the masked-region PSNR (DnCNN inpaints too) and the input's PSNR."""
    sweep = tmp_path / "sweep"
    result = run_cli(
        "tl-train",
        "-m",
        "experiment=restoration_deblur_inpaint",
        "data/degrade=inpaint_box",
        "seed=0",
        *TINY_RUN,
        "trainer.max_steps=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = report([str(sweep)])
    rows = [line for line in table.splitlines() if line.startswith("| ") and "restorer" not in line]
    assert sorted(row.split("|")[1].strip() for row in rows) == sorted(RESTORERS)
    header = next(line for line in table.splitlines() if "restorer" in line)
    assert "test/psnr_masked" in header and "test/psnr_input" in header
    assert all(cell.strip() != "" for row in rows for cell in row.split("|")[1:-1])
