"""``hydra/sweeper=transferlab_optuna``: hydra-optuna-sweeper with trial pruning (``hydra.sweeper.pruner``).

Hydra's Optuna sweeper keeps each trial object in the sweeping process and only sees a job's final return
value, so a job cannot report per-epoch values or be stopped early. This sweeper hands every job its trial
instead: the study lives in a storage both can reach (by default an SQLite file in the sweep directory), and
each job gets the storage URL, study name, trial number and pruner config in its environment. The job's
`transferlab.callbacks.OptunaPruning` callback reports the monitored metric after each validation and, when
the pruner says so, stops the run at the end of that epoch and records it in ``metrics.json``; the sweeper
then tells Optuna that trial was PRUNED, and every other trial's final value as Hydra's does.

With ``pruner: null`` the sweep is Hydra's own, unchanged. Hydra imports every plugin module at start-up
(``--help`` included), so this one imports nothing heavy; the sweep itself lives in ``_pruning.py``.
"""

import logging
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


@dataclass
class PruningOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.transferlab_optuna.sweeper.PruningOptunaSweeper"
    # An Optuna pruner config, e.g. {_target_: optuna.pruners.MedianPruner, n_startup_trials: 5}; null: no pruning
    pruner: Any = None


# Optuna imports alembic (when Hydra builds the sampler and pruner), which logs a line per alembic plugin.
logging.getLogger("alembic").setLevel(logging.WARNING)

ConfigStore.instance().store(
    group="hydra/sweeper", name="transferlab_optuna", node=PruningOptunaSweeperConf, provider="transferlab"
)


class PruningOptunaSweeper(OptunaSweeper):
    def __init__(self, pruner: Any = None, **kwargs: Any) -> None:  # noqa: D107 - Hydra passes the config's keys
        from ._pruning import PruningSweeperImpl

        self.sweeper = PruningSweeperImpl(pruner=pruner, **kwargs)
