"""``hydra/sweeper=basic``, every command's default: Hydra's basic sweeper, but a failed job no longer
ends the sweep.

Hydra's sweeper re-raises the first failed job's exception after each batch, so one diverging learning rate
stopped a 12-job grid. This one runs every batch, then ends with `transferlab.sweeps.end_sweep`'s one line
(``error: 2 of 12 jobs failed: …``, exit status 1) when any job failed. Jobs record their own failure
(``failed.json``) through `transferlab.sweeps.sweep_job`; every launcher hands back FAILED `JobReturn`s.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from transferlab.upstream.hydra_basic_sweeper import BasicSweeper, BasicSweeperConf


@dataclass
class TransferlabBasicSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.transferlab_sweeper.basic.TransferlabBasicSweeper"


# Stored under Hydra's own name, `basic`, replacing it (this module imports Hydra's first, so this entry wins):
# every command's default sweeper, and `hydra/sweeper=basic`, behave this way, while `sweep=optuna` still
# overrides the group with its own sweeper.
ConfigStore.instance().store(
    group="hydra/sweeper", name="basic", node=TransferlabBasicSweeperConf, provider="transferlab"
)


class TransferlabBasicSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        """Hydra's loop (batches of ``max_batch_size`` jobs, each batch validated first), without the re-raise."""
        from transferlab.sweeps import end_sweep
        from transferlab.utils.errors import report_user_errors
        from transferlab.utils.io import SWEEP_ELSEWHERE, write_bytes_atomic

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        params = [*self._parse_config(), *arguments]
        overrides = OverridesParser.create(config_loader=self.hydra_context.config_loader).parse_overrides(params)
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        yaml = OmegaConf.to_yaml(self.config).encode()  # what Hydra's OmegaConf.save writes, written atomically
        report_user_errors(write_bytes_atomic)(sweep_dir / "multirun.yaml", yaml, SWEEP_ELSEWHERE)  # one line, exit 2

        returns: list[Any] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            returns.append(self.launcher.launch(batch, initial_job_idx=initial_job_idx))
            initial_job_idx += len(batch)
        end_sweep(ret for batch in returns for ret in batch)
        return returns
