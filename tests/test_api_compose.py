"""The Python API runs a job the way the command does, through Hydra's public compose API only."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def test_api_job_leaves_what_the_command_leaves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run directory, ``.hydra/`` (read by ``tl-report`` and resume), the job's log file, and no Hydra state after."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    import transferlab

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRANSFERLAB_ROOT", str(tmp_path))
    overrides = ["debug=tiny", "logger=none"]
    result = transferlab.train([*overrides, "+hydra.job.env_set.TL_API_PROBE=set"])
    run_dir = result["run_dir"]
    assert run_dir.parent.parent == tmp_path / "outputs" / "runs" and (run_dir / "metrics.json").is_file()
    assert result["metrics"]["test/acc"] >= 0.0
    saved = run_dir / ".hydra"
    assert OmegaConf.load(saved / "overrides.yaml") == overrides
    hydra_cfg = OmegaConf.load(saved / "hydra.yaml").hydra
    assert hydra_cfg.runtime.output_dir == str(run_dir) and hydra_cfg.mode == "RUN" and hydra_cfg.job.name == "train"
    assert hydra_cfg.job.env_set == {"TL_API_PROBE": "set"}
    config = OmegaConf.load(saved / "config.yaml")
    assert "hydra" not in config and "trainer" in config and result["overrides"] == overrides
    assert (run_dir / "train.log").is_file()  # Hydra's job logging, configured as the command configures it
    assert not HydraConfig.initialized() and not GlobalHydra.instance().is_initialized()
    assert "TL_API_PROBE" not in os.environ  # env_set applies to the job only


def test_api_uses_no_private_hydra_api() -> None:
    """The API composes with ``hydra.initialize_config_dir`` + ``compose``, not ``hydra._internal``."""
    tree = ast.parse((ROOT / "src" / "transferlab" / "api.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "hydra" in imported and not any("._" in (name or "") for name in imported), imported
