"""RestorationTask: every restoration config trains, fine-tune modes reach the U-Net encoder, metrics are
what the config states, image grids reach TensorBoard, and a short denoiser run beats the noisy input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.functional.image import peak_signal_noise_ratio

from conftest import fit_briefly
from transferlab.tasks.restoration import rgb_to_y
from transferlab.train import run
from transferlab.trust import open_checkpoint

# Small photo patches and small networks: each run takes seconds on a CPU.
PHOTOS = [
    "data=photos",
    "data.patch_size=32",
    "data.batch_size=4",
    "data.train_patches=16",
    "data.val_patches=4",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
SMALL = {
    "denoise": ["model.net.depth=4", "model.net.channels=8"],
    "restore_unet": ["model.net.width=8"],
    "super_resolution": ["model.net.channels=8", "model.net.blocks=2"],
}


def photo_cfg(make_cfg, model: str, degrade: str, *extra: str):
    return make_cfg(*PHOTOS, f"model={model}", f"data/degrade={degrade}", *SMALL[model], *extra, tiny=False)


def build(make_cfg, model: str, degrade: str, *extra: str):
    cfg = photo_cfg(make_cfg, model, degrade, *extra)
    datamodule = instantiate(cfg.data)
    return datamodule, instantiate(cfg.model, **datamodule.task_args())


@pytest.mark.parametrize(
    ("model", "degrade", "extra"),
    [
        ("denoise", "gaussian_noise", []),
        ("denoise", "jpeg", ["model.loss=charbonnier"]),
        ("restore_unet", "inpaint_brush", ["model.loss=l2"]),
        ("restore_unet", "motion_blur", ["model.perceptual.weight=0.1"]),
        ("super_resolution", "downscale", ["data.degrade.steps.0.factor=4"]),
    ],
)
def test_restoration_configs_train_with_fast_dev_run(make_cfg, model: str, degrade: str, extra: list[str]) -> None:
    cfg = photo_cfg(make_cfg, model, degrade, "debug=fdr", *extra)
    assert cfg.monitor.metric == "val/psnr" and cfg.monitor.mode == "max"
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["metrics"]
    assert {"test/psnr", "test/ssim", "test/psnr_input", "val/psnr"} <= set(metrics)
    if degrade.startswith("inpaint"):
        assert "test/psnr_masked" in metrics


def test_unet_encoder_follows_the_finetune_modes(make_cfg) -> None:
    datamodule, model = build(make_cfg, "restore_unet", "gaussian_noise", "model.finetune.mode=linear_probe")
    encoder = {k: v.clone() for k, v in model.net.backbone.state_dict().items()}
    decoder = {k: v.clone() for k, v in model.net.decoder.state_dict().items()}
    fit_briefly(model, datamodule, epochs=1, steps=2)
    for key, value in model.net.backbone.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(value, encoder[key]), key
    assert any(not torch.equal(v, decoder[k]) for k, v in model.net.decoder.state_dict().items())
    _, gradual = build(
        make_cfg, "restore_unet", "gaussian_noise", "model.finetune.mode=gradual", "model.scheduler=null"
    )
    groups = {g["name"]: g["lr"] for g in gradual.configure_optimizers().param_groups}
    assert groups == {"head": 0.001, "backbone": pytest.approx(0.0001)}


def test_unet_encoder_takes_pretrained_weights_from_a_file(make_cfg, tmp_path: Path) -> None:
    from torchvision.models import resnet18

    source = resnet18()
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    _, model = build(make_cfg, "restore_unet", "gaussian_noise", f"model.backbone.weights={tmp_path}/resnet18.pth")
    torch.testing.assert_close(model.net.backbone.get_submodule("layer1.0.conv1").weight, source.layer1[0].conv1.weight)


TIMM_UNET = ["model.backbone.name=timm/resnet18", "model.backbone.layers=[act1,layer1,layer2]"]


def test_unet_on_a_timm_encoder_takes_safetensors_weights_and_freezes(make_cfg, tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18")
    save_file(source.state_dict(), str(tmp_path / "resnet18.safetensors"))
    weights = f"model.backbone.weights={tmp_path}/resnet18.safetensors"
    datamodule, model = build(
        make_cfg, "restore_unet", "gaussian_noise", *TIMM_UNET, weights, "model.finetune.mode=linear_probe"
    )
    torch.testing.assert_close(model.net.backbone.model.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    encoder = {k: v.clone() for k, v in model.net.backbone.state_dict().items()}
    fit_briefly(model, datamodule, epochs=1, steps=2)
    for key, value in model.net.backbone.state_dict().items():
        assert torch.equal(value, encoder[key]), key


def test_unet_on_a_timm_encoder_learns_to_denoise(make_cfg) -> None:
    """40 Adam steps on one batch of σ=25 patches: the timm-encoder U-Net ends well above the noisy input's PSNR."""
    datamodule, model = build(make_cfg, "restore_unet", "gaussian_noise", *TIMM_UNET, "data.batch_size=8")
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    degraded, clean = batch["degraded"].float() / 255, batch["clean"].float() / 255
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=2e-3)
    for _ in range(40):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(degraded, batch["mask"].float()), clean).backward()
        optimizer.step()
    with torch.no_grad():
        restored = model.eval()(degraded, batch["mask"].float()).clamp(0, 1)
    gain = peak_signal_noise_ratio(restored, clean, data_range=1.0) - peak_signal_noise_ratio(
        degraded, clean, data_range=1.0
    )
    assert gain > 2.0, gain


def test_psnr_follows_channel_crop_border_and_data_range(make_cfg) -> None:
    _, model = build(make_cfg, "denoise", "gaussian_noise", "model.metrics.channel=y", "model.metrics.crop_border=2")
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 16, 16, generator=generator)
    restored = (clean + 0.05 * torch.randn(2, 3, 16, 16, generator=generator)).clamp(0, 1)
    metrics = model.quality["test"]
    metrics["psnr"].update(model.for_metric(restored), model.for_metric(clean))
    y_out, y_ref = rgb_to_y(restored)[..., 2:-2, 2:-2], rgb_to_y(clean)[..., 2:-2, 2:-2]
    per_image = [peak_signal_noise_ratio(y_out[i], y_ref[i], data_range=1.0) for i in range(2)]
    torch.testing.assert_close(metrics["psnr"].compute(), torch.stack(per_image).mean())
    white = torch.ones(1, 3, 2, 2)
    torch.testing.assert_close(rgb_to_y(white), torch.full((1, 1, 2, 2), 235 / 255))
    _, scaled = build(make_cfg, "denoise", "gaussian_noise", "model.metrics.data_range=255")
    torch.testing.assert_close(scaled.for_metric(white), white * 255)


def test_masked_psnr_measures_only_the_missing_region(make_cfg) -> None:
    _, model = build(make_cfg, "restore_unet", "inpaint_box")
    clean = torch.full((1, 3, 16, 16), 0.5)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :] = 1
    restored = clean.clone()
    restored[..., :8, :] += 0.1  # error of 0.1 inside the hole only: masked PSNR = 20 dB
    model.update_quality("test", clean, restored, clean, mask)
    assert model.quality["test"]["psnr_masked"].compute().item() == pytest.approx(20.0, abs=1e-3)


def test_grid_and_metrics_reach_tensorboard_and_checkpoint_reloads(make_cfg) -> None:
    cfg = photo_cfg(make_cfg, "restore_unet", "inpaint_box", "trainer.max_epochs=2", "trainer.log_every_n_steps=1")
    run(cfg)
    out = Path(cfg.paths.output_dir)
    events = EventAccumulator(str(out), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert {"val/psnr", "val/ssim", "val/psnr_input", "val/psnr_masked", "train/loss_step"} <= set(
        events.Tags()["scalars"]
    )
    grids = events.Images("val/degraded_restored_clean")
    assert len(grids) == 2 and grids[0].width == 3 * 32 + 4 * 2  # three 32 px columns and their padding
    ckpt = out / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["mask_channel"] is True
    model = open_checkpoint(ckpt).build_task()
    x, mask = torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32)
    assert model.eval().restore(x, mask).shape == (1, 3, 32, 32)


def test_wrong_scale_and_bad_settings_are_user_errors(make_cfg) -> None:
    with pytest.raises(Exception, match="Use model=super_resolution"):
        build(make_cfg, "restore_unet", "downscale")
    with pytest.raises(Exception, match="Use model=super_resolution"):
        build(make_cfg, "denoise", "downscale")
    with pytest.raises(Exception, match="channel must be 'rgb' or 'y'"):
        build(make_cfg, "denoise", "gaussian_noise", "model.metrics.channel=lab")
    with pytest.raises(Exception, match="unknown pixel loss"):
        build(make_cfg, "denoise", "gaussian_noise", "model.loss=l3")


@pytest.mark.slow
def test_short_denoiser_run_beats_the_noisy_input(make_cfg) -> None:
    """σ=25 on embedded photos: 100 steps of a small DnCNN gain over 3 dB on the noisy input (~6 dB measured)."""
    cfg = make_cfg(
        *PHOTOS,
        "model=denoise",
        "data/degrade=gaussian_noise",
        "model.net.depth=6",
        "model.net.channels=32",
        "data.batch_size=16",
        "data.train_patches=1600",
        "data.val_patches=32",
        "logger=none",
        "test=false",
        tiny=False,
    )
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["metrics"]
    assert 20.0 < metrics["val/psnr_input"] < 21.5  # σ=25 noise on [0, 255] images: ~20.2 dB before clipping
    assert metrics["val/psnr"] > metrics["val/psnr_input"] + 3.0, metrics
