"""Hydra's ``hydra._internal.core_plugins.basic_sweeper.BasicSweeper`` (and ``BasicSweeperConf``).

Why: ``hydra/sweeper=basic`` (every command's default) is Hydra's basic sweeper minus one line: Hydra re-raises
the first failed job's exception after each batch, stopping a grid at its first diverging job. The subclass
(`hydra_plugins.transferlab_sweeper.basic`) keeps Hydra's batching and validation by calling its methods
``_parse_config``, ``split_arguments``, ``get_job_batch``, ``is_done`` and ``validate_batch_is_legal``.
Hydra imports this module itself whenever it starts (the default sweeper), so importing it here costs nothing.
Without it: one failed job ends a sweep (tests/test_sweep_failures.py).
Checked: hydra-core 1.3.2–1.3.8.
"""

from __future__ import annotations

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf

__all__ = ["BasicSweeper", "BasicSweeperConf"]
