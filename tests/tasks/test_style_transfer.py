"""StyleTransferTask: Johnson and AdaIN configs train, the loss network stays frozen, each loss term and the
(content | style | output) grid reach TensorBoard, and style mistakes are one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY_PHOTOS
from transferlab.losses import gram_matrix
from transferlab.train import run
from transferlab.trust import open_checkpoint

CONTENT = [*TINY_PHOTOS, "trainer.max_epochs=1", "model.style_size=64"]
SMALL = {
    "style_transfer": ["model.net.channels=4", "model.net.res_blocks=1"],
    "adain": ["model.net.min_channels=8", "model.loss_network.name=vgg11"],
}


def style_cfg(make_cfg, model: str, *extra: str):
    return make_cfg(*CONTENT, f"model={model}", *SMALL[model], *extra, tiny=False)


@pytest.mark.parametrize("model", ["style_transfer", "adain"])
def test_style_configs_train_with_fast_dev_run(make_cfg, model: str) -> None:
    cfg = style_cfg(make_cfg, model, "debug=fdr")
    assert cfg.monitor.metric == "val/loss" and cfg.monitor.mode == "min"
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["metrics"]
    assert {"test/loss", "test/loss_content", "test/loss_style", "test/loss_tv"} <= set(metrics)


def test_loss_terms_grid_checkpoint_and_frozen_loss_network(make_cfg, tmp_path: Path) -> None:
    style_file = tmp_path / "stripes.png"
    stripes = np.zeros((80, 80, 3), dtype=np.uint8)
    stripes[::8] = (255, 0, 0)
    Image.fromarray(stripes).save(style_file)
    cfg = style_cfg(
        make_cfg,
        "style_transfer",
        f"model.styles=[brick,{style_file}]",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "test=false",
    )
    pl.seed_everything(cfg.seed, workers=True)  # as run() does: the same random-feature loss network
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, **datamodule.task_args())
    loss_net = {k: v.clone() for k, v in model.loss_net.state_dict().items()}
    run(cfg)
    out = Path(cfg.paths.output_dir)
    events = EventAccumulator(str(out), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_content_step", "train/loss_style_step", "train/loss_tv_step", "val/loss_style"} <= scalars
    grids = events.Images("val/content_style_output")
    assert len(grids) == 2 and grids[0].width == 3 * 32 + 4 * 2
    ckpt = out / "checkpoints" / "best.ckpt"
    trained = open_checkpoint(ckpt).build_task()
    for key, value in trained.loss_net.state_dict().items():  # never trained
        torch.testing.assert_close(value, loss_net[key])
    assert trained.style_images.shape == (2, 3, 64, 64) and trained.style_images[1, 0].max() > 150  # red stripes
    assert trained.style_images[1, 1:].max() == 0
    # Two styles are blended: the target Gram is the mean of the two images' Grams.
    features = trained.loss_net(trained.style_images.float() / 255)
    first = next(iter(trained.style_layers))
    torch.testing.assert_close(trained.style_grams()[first], gram_matrix(features[first]).mean(0))


def test_adain_stylizes_with_any_style_image(make_cfg) -> None:
    cfg = style_cfg(make_cfg, "adain")
    model = instantiate(cfg.model).eval()
    content = torch.rand(1, 3, 36, 44)
    with torch.no_grad():
        a = model.stylize(content, torch.rand(1, 3, 32, 32))
        b = model.stylize(content, torch.zeros(1, 3, 32, 32))
    assert a.shape == content.shape and not torch.equal(a, b)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.styles=[/no/such/style.jpg]", "image '/no/such/style.jpg' is neither an embedded image"),
        ("model.styles=[]", "model.styles is empty"),
        ("model.net._target_=transferlab.nets.nosuch.Net", "model.net._target_=transferlab.nets.nosuch.Net cannot"),
        ("model.net._target_=torch.optim.Adam", "is not a network"),
        ("+model.style_layers.relu9_1=1.0", "has no layer 'relu9_1'"),
    ],
)
def test_style_mistakes_are_user_errors(make_cfg, override: str, message: str) -> None:
    cfg = style_cfg(make_cfg, "style_transfer", override)
    with pytest.raises(Exception, match=message):
        instantiate(cfg.model)


def test_loss_network_options_bring_their_own_layers(make_cfg) -> None:
    """Layers and style weight belong to the loss network: switching the option switches all of them."""
    vgg = style_cfg(make_cfg, "style_transfer")
    assert vgg.model.loss_network.name == "vgg16" and vgg.model.loss_network.weights is None
    assert set(vgg.model.content_layers) == {"relu2_2"} and vgg.model.style_weight == 1e4
    lite = style_cfg(make_cfg, "style_transfer", "model/loss_network=efficientnet_lite0")
    assert lite.model.loss_network.name == "efficientnet_lite0" and lite.model.loss_network.weights == "imagenet"
    assert set(lite.model.style_layers) == {"bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3"}
    assert lite.model.style_weight == 5.0
    instantiate(lite.model)  # its layers exist in that network


@pytest.mark.slow
def test_style_comparison_scores_every_stylizer_under_every_loss_network(make_cfg, tmp_path: Path) -> None:
    compare = Path(__file__).resolve().parents[2] / "experiments" / "style_transfer" / "compare.py"
    checkpoints = {}
    runs = {"lite0": ["model/loss_network=efficientnet_lite0"], "vgg": []}
    for name, extra in runs.items():
        overrides = [*CONTENT, "model=style_transfer", *SMALL["style_transfer"], *extra, "test=false"]
        cfg = make_cfg(*overrides, tiny=False, out=name)
        run(cfg)
        checkpoints[name] = Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt"
    args = [f"--run=lite0={checkpoints['lite0']}", *[f"--run=vgg={checkpoints['vgg']}"] * 2]
    result = subprocess.run(
        [sys.executable, str(compare), *args, "--out", str(tmp_path / "cmp")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in (tmp_path / "cmp" / "results.md").read_text().splitlines() if line.startswith("| ")]
    cells = [[cell.strip() for cell in row.split("|")[1:-1]] for row in rows[1:]]
    assert [row[0] for row in cells] == ["identity (no stylization)", "lite0", "vgg"]
    assert cells[0][1:] == ["1", "0", "1", "0", "1"]  # identity: no content loss, the base style loss
    assert cells[1][1] == "1" and cells[2][1] == "2"  # checkpoints (seeds) per stylizer
    assert all(" ± 0" in value for value in cells[2][2:])  # the same checkpoint twice: no spread
    with Image.open(tmp_path / "cmp" / "grid.png") as grid:
        assert grid.size == (4 * 128, 3 * 128)  # content, style, two outputs; three photos
