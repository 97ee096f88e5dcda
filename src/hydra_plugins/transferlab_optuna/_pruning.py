"""The pruning sweep of `PruningOptunaSweeper` (imported only when a sweep starts: it imports Optuna)."""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from transferlab.constants import METRICS_FILE, OPTUNA_STUDY_DB, OPTUNA_TRIAL_ENV

log = logging.getLogger(__name__)
EXIT_USER_ERROR = 2  # as transferlab.utils.errors


class PruningSweeperImpl(OptunaSweeperImpl):
    def __init__(self, pruner: optuna.pruners.BasePruner | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pruner = pruner
        self.pruner_config: dict[str, Any] | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        # The jobs build their own pruner (Optuna keeps pruners out of the storage): from its config, not the object.
        pruner = config.hydra.sweeper.pruner
        self.pruner_config = OmegaConf.to_container(pruner, resolve=True) if pruner is not None else None  # type: ignore

    def sweep(self, arguments: list[str]) -> None:
        if self.pruner is None:  # pruning off: Hydra's sweep, unchanged
            return super().sweep(arguments)
        if len(self._get_directions()) != 1:
            fail(
                "hydra.sweeper.pruner needs one objective (Optuna prunes single-objective studies only). "
                "Set hydra.sweeper.pruner=null for a multi-objective sweep"
            )
        space, fixed = self._search_space(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = self.storage or f"sqlite:///{sweep_dir / OPTUNA_STUDY_DB}"
        study = self._study(storage)
        log.info(f"Study name: {study.study_name}")
        log.info(f"Storage: {storage}")
        log.info(f"Sampler: {type(self.sampler).__name__}")
        log.info(f"Pruner: {type(self.pruner).__name__}")
        log.info(f"Directions: {self._get_directions()}")

        remaining = self.n_trials
        while remaining > 0:
            batch = min(remaining, self.n_jobs)
            trials = [study.ask() for _ in range(batch)]
            overrides = self._configure_trials(trials, space, fixed)
            handed = [
                (*job, self._handover(storage, study.study_name, trial.number)) for job, trial in zip(overrides, trials)
            ]
            returns = self.launcher.launch(handed, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            study = self._study(storage)  # a fresh view: its cache has not seen what the jobs reported
            failures = [err for trial, ret in zip(trials, returns) if (err := self._tell(study, trial.number, ret))]
            if len(failures) / len(returns) > self.max_failure_rate:
                log.error(
                    f"Failed {failures} times out of {len(returns)} with max_failure_rate={self.max_failure_rate}."
                )
                for ret in returns:
                    ret.return_value  # noqa: B018 - raises the failed job's own error, with its traceback
            remaining -= batch
        self._save_results(study)

    def _search_space(self, arguments: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Distributions to sample and fixed values, as Hydra's sweep derives them (a grid sampler gets its grid)."""
        self._process_searchspace_config()
        space, fixed = create_params_from_overrides([*self._parse_sweeper_params_config(), *arguments])
        space = {**(self.search_space_distributions or {}), **space}
        if isinstance(self.sampler, functools.partial) and self.sampler.func == optuna.samplers.GridSampler:
            grid = {name: self._to_grid_sampler_choices(distribution) for name, distribution in space.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(choices) for choices in grid.values()))
        for name in fixed:
            space.pop(name, None)
        return space, fixed

    def _study(self, storage: str) -> optuna.Study:
        return optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self.sampler,
            pruner=self.pruner,
            direction=self._get_directions()[0],
            load_if_exists=True,
        )

    def _handover(self, storage: str, study_name: str, number: int) -> str:
        """The override that gives a job its trial: an environment variable (Hydra sets it for the job only)."""
        spec = json.dumps({"storage": storage, "study_name": study_name, "trial": number, "pruner": self.pruner_config})
        quoted = spec.replace("\\", "\\\\").replace("'", "\\'")
        return f"++hydra.job.env_set.{OPTUNA_TRIAL_ENV}='{quoted}'"

    @staticmethod
    def _tell(study: optuna.Study, number: int, ret: JobReturn) -> Exception | None:
        """Finish trial `number` from its job's result: PRUNED when the job's ``metrics.json`` says it was (a
        re-launched sweep's finished job included), else its returned value, or FAIL."""
        if was_pruned(ret):
            study.tell(number, state=TrialState.PRUNED)  # value: the last epoch the job reported
            log.info(f"Trial {number} was pruned")
            return None
        try:
            value = float(ret.return_value)
        except Exception as err:  # the job failed, or returned no number (nothing monitored)
            study.tell(number, state=TrialState.FAIL)
            log.warning(f"Failed experiment: {err}")
            return err
        study.tell(number, value)
        return None

    def _save_results(self, study: optuna.Study) -> None:
        pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
        best = study.best_trial  # COMPLETE trials only: a pruned trial is never the best
        log.info(f"Best parameters: {best.params}")
        log.info(f"Best value: {best.value}")
        log.info(f"Pruned trials: {pruned}")
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value, "pruned_trials": pruned}
        OmegaConf.save(OmegaConf.create(results), f"{self.config.hydra.sweep.dir}/optimization_results.yaml")


def was_pruned(ret: JobReturn) -> bool:
    """Whether the job's ``metrics.json`` (written by its OptunaPruning callback's summary) says it was pruned."""
    summary = Path(ret.hydra_cfg.hydra.runtime.output_dir) / METRICS_FILE
    if ret.status != JobStatus.COMPLETED or not summary.is_file():
        return False
    return bool(json.loads(summary.read_text()).get("optuna_trial", {}).get("pruned"))


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)
