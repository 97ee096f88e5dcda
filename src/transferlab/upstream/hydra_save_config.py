"""Hydra's ``hydra.core.utils._save_config``: how a job's ``.hydra/{config,hydra,overrides}.yaml`` are written.

Why: Hydra writes them with a plain ``open()`` before the job runs (outside transferlab's error handling); on a
full disk it leaves an empty ``config.yaml`` and ends in a traceback. transferlab writes them atomically instead
(`transferlab.cli.write_hydra_files_atomically`). ``run_job`` looks the function up in its module at each job,
so replacing the module attribute is enough.
Without it: a truncated ``config.yaml`` and a traceback on a full disk (tests/test_disk_full.py).
Checked: hydra-core 1.3.2–1.3.8.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

SaveConfig = Callable[[Any, str, Path], None]


def install(save_config: SaveConfig) -> None:
    """Make Hydra write each ``.hydra/*.yaml`` with `save_config(cfg, filename, output_dir)`."""
    import hydra.core.utils as hydra_utils

    hydra_utils._save_config = save_config
