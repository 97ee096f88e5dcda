"""``hydra/sweeper=transferlab_optuna`` (used by ``sweep=optuna``): an Optuna (>= 4) sweeper that finishes a
study to a total, re-runs interrupted trials where they stopped, prunes, and survives failing trials.

Hydra's own Optuna sweeper (hydra-optuna-sweeper) pinned Optuna 2.10, kept each trial object in the sweeping
process (a job could not report per-epoch values, so nothing could be pruned) and added ``n_trials`` more
trials on every launch. This one:

* keeps the study in a storage that the sweeper and the jobs both reach, by default ``<sweep dir>/optuna.db``
  (an Optuna journal file, `transferlab.utils.optuna_storage`), so a sweep is persistent and
  ``optuna-dashboard <sweep dir>/optuna.db`` shows it;
* hands every job its trial (storage URL, study name, trial number, pruner config) in its environment
  (`transferlab.constants.OPTUNA_TRIAL_ENV`, through ``hydra.job.env_set``, so it stays out of the job's
  directory name); the job's `transferlab.callbacks.OptunaPruning` reports the monitored metric after each
  epoch and stops the run when the pruner says so, and the sweeper then tells Optuna the trial was PRUNED;
* treats ``n_trials`` as a total: a re-launch into the same sweep directory runs only the missing trials, and
  first re-runs every trial a killed sweep left RUNNING, under the same trial number and in the same job
  directory (its recorded overrides), where the job resumes from its ``last.ckpt``;
* tells Optuna FAIL for a failed job, goes on, and ends like every sweep (`transferlab.sweeps.end_sweep`:
  one line naming the failed jobs, exit status 1).

Hydra imports every plugin module at start-up (``--help`` included), so this one imports nothing heavy (and
no ``from __future__ import annotations``: Hydra runs the module before it is in ``sys.modules``, where
`dataclass` would look its string annotations up): the
sweep lives in ``_study.py`` and the search-space syntax in ``_space.py``, imported when a sweep starts.
"""

import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

EXIT_USER_ERROR = 2  # as transferlab.utils.errors (not imported here: plugins must load fast)
MIN_OPTUNA = 4
INSTALL = 'pip install "transferlab[optuna]"'


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.transferlab_optuna.sweeper.OptunaSweeper"
    # The sampler and pruner stay configs until the sweep starts (Optuna is imported then, not by Hydra).
    _recursive_: bool = False
    # Any Optuna sampler: {_target_: optuna.samplers.RandomSampler, seed: 0}; GridSampler gets its grid from
    # the search space. Keys beyond _target_ and seed are added with a +: +hydra.sweeper.sampler.n_startup_trials=5
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    # minimize or maximize; a list of them for a multi-objective study (then `objectives` names the values)
    direction: Any = "minimize"
    # A journal file path or a database URL; null: the journal <sweep dir>/optuna.db (what a re-launch continues)
    storage: Any = None
    study_name: Any = None  # null: Optuna makes one up (a re-launch then needs it: give a name)
    n_trials: int = 20  # the study's total: COMPLETE, PRUNED and FAIL trials all count
    # Trials launched together (one batch); null: the launcher's `jobs` when it has a number, else 1
    n_jobs: Any = None
    # An Optuna pruner config, e.g. {_target_: optuna.pruners.MedianPruner, n_startup_trials: 5}; null: none
    pruner: Any = None
    params: Any = None  # key: search space (choice(…), range(…), interval(…), tag(log, interval(…))) or a value
    # For a multi-objective study: one name per direction, read from each job's metrics.json ("metrics" or a
    # top-level number such as wall_time_s); null: the job's returned value (monitor.metric's best)
    objectives: Any = None


# Optuna imports alembic (for its storage), which logs a line per alembic plugin.
logging.getLogger("alembic").setLevel(logging.WARNING)

ConfigStore.instance().store(
    group="hydra/sweeper", name="transferlab_optuna", node=OptunaSweeperConf, provider="transferlab"
)


class OptunaSweeper(Sweeper):
    """The Hydra plugin: configuration in, the sweep of ``_study.py`` out."""

    def __init__(self, **settings: Any) -> None:  # Hydra passes the config's keys; setup() reads them resolved
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> Any:
        from transferlab.utils.errors import UserError

        assert self.config is not None and self.hydra_context is not None
        try:
            require_optuna()
            from ._study import OptunaSweep

            return OptunaSweep(self.config, self.launcher, self.hydra_context).run(arguments)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)


def require_optuna() -> None:
    """Optuna >= 4 is importable, or a `UserError` that says how to install it."""
    from transferlab.utils.errors import UserError

    try:
        import optuna
    except ImportError:
        raise UserError(f"sweep=optuna needs Optuna, which is not installed. Run: {INSTALL}") from None
    major = int(str(optuna.__version__).split(".")[0])
    if major < MIN_OPTUNA:
        raise UserError(
            f"sweep=optuna needs Optuna {MIN_OPTUNA} or newer, this environment has {optuna.__version__}. "
            f"Run: pip install -U optuna, or {INSTALL}"
        )
