"""A user's own config folder beside an installed transferlab's configs (docs/configuration.md, "Your own config
folder"): ``tl-train --config-dir <dir>`` and ``hydra.searchpath=[file://<dir>]`` both add its options, are checked
before the run like transferlab's own, and reach the processes DDP starts for ranks > 0."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from conftest import TINY, compose_config, run_cli

MYDATA = "defaults:\n  - shapes\n  - _self_\nclasses: [0, 1, 2]   # three of the ten shapes\n"


@pytest.fixture
def own_conf(tmp_path: Path) -> Path:
    folder = tmp_path / "myconf"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "mydata.yaml").write_text(MYDATA)
    return folder


def _forms(folder: Path) -> dict[str, list[str]]:
    return {
        "config-dir": ["--config-dir", str(folder)],
        "config-dir=": [f"--config-dir={folder}"],
        "searchpath": [f"hydra.searchpath=[file://{folder}]"],
    }


@pytest.mark.parametrize("form", ["config-dir", "searchpath"])
def test_own_data_config_trains(form: str, own_conf: Path, tmp_path: Path) -> None:
    result = run_cli("tl-train", *_forms(own_conf)[form], "data=mydata", *TINY, "logger=none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1].removeprefix("Run directory: "))
    assert (run_dir / "metrics.json").is_file()
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["data"]["classes"] == [0, 1, 2]


@pytest.mark.parametrize("form", ["config-dir", "config-dir=", "searchpath"])
def test_mistakes_with_own_folder_are_one_line(form: str, own_conf: Path, tmp_path: Path) -> None:
    """The preflight sees the user's folder: a typo in its option's name gets the close match, before torch."""
    result = run_cli("tl-train", *_forms(own_conf)[form], "data=mydat", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no data config named 'mydat'. Available: cifar10, cifar100, imagefolder, mydata, photos, shapes, "
        "shapes_unseen. Did you mean mydata?"
    ]
    result = run_cli("tl-train", *_forms(own_conf)[form], "data=mydata", "trainer.max_epochs=-3", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: trainer.max_epochs must be")


def test_missing_config_dir_is_one_line(tmp_path: Path) -> None:
    result = run_cli("tl-train", "--config-dir", str(tmp_path / "nowhere"), "data=mydata", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: --config-dir {tmp_path / 'nowhere'} is not a folder. Pass the folder that holds your config groups"
    )


@pytest.mark.parametrize("provider", ["command-line", "hydra.searchpath in command-line"])
def test_ddp_child_rank_finds_own_folder(provider: str, own_conf: Path, tmp_path: Path) -> None:
    """The command a rank > 0 runs carries the folder: composing it (``--cfg job``) finds ``data=mydata``."""
    from transferlab.runner import ddp_child_command

    cfg = compose_config(["data=mydata", f"hydra.searchpath=[file://{own_conf}]"], tmp_path / "run")
    if provider == "command-line":  # as Hydra records --config-dir
        OmegaConf.set_readonly(cfg.hydra, False)
        with open_dict(cfg):
            cfg.hydra.searchpath = []
            for source in cfg.hydra.runtime.config_sources:
                if source.provider == "hydra.searchpath in command-line":
                    source.provider = "command-line"
        HydraConfig.instance().set_config(cfg)
    try:
        command, cwd = ddp_child_command(1)
    finally:
        GlobalHydra.instance().clear()
    result = subprocess.run([*command, "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load(result.stdout)["data"]["classes"] == [0, 1, 2]
