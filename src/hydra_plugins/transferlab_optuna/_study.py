"""The sweep of `OptunaSweeper` (imported only when a sweep starts: it imports Optuna). See sweeper.py."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from transferlab.constants import METRICS_FILE, OPTUNA_STUDY_DB, OPTUNA_TRIAL_ENV
from transferlab.sweeps import end_sweep, read_failure
from transferlab.upstream.hydra_job_return import stored_value
from transferlab.utils.errors import UserError, one_line
from transferlab.utils.io import SWEEP_ELSEWHERE, atomic_file
from transferlab.utils.optuna_storage import open_storage

from ._space import SearchSpace, parse_search_space

log = logging.getLogger(__name__)
OVERRIDES_ATTR = "overrides"  # the trial's user attribute holding its job's overrides (its directory name)
LOCK_FILE = ".optuna.lock"  # held while a sweep runs in the directory: its RUNNING trials are its own
DIRECTIONS = ("minimize", "maximize")


class OptunaSweep:
    """One launch of an Optuna sweep: finish the study in the storage to ``n_trials`` trials."""

    def __init__(self, config: DictConfig, launcher: Any, hydra_context: HydraContext) -> None:
        self.config = config
        self.launcher = launcher
        self.hydra_context = hydra_context
        settings: dict[str, Any] = OmegaConf.to_container(config.hydra.sweeper, resolve=True)  # type: ignore
        self.sampler_config: dict[str, Any] = dict(settings.get("sampler") or {})
        self.pruner_config: dict[str, Any] | None = settings.get("pruner")
        self.params: dict[str, Any] = dict(settings.get("params") or {})
        self.study_name: str | None = settings.get("study_name")
        self.storage_url: str | None = settings.get("storage")
        self.directions = _directions(settings.get("direction"))
        self.objectives: list[str] | None = settings.get("objectives")
        self.n_trials = _positive(settings.get("n_trials"), "hydra.sweeper.n_trials")
        jobs = settings.get("n_jobs")
        if jobs is None:  # as many at once as the launcher runs, when it says
            launcher_jobs = OmegaConf.select(config, "hydra.launcher.jobs", default=None)
            jobs = launcher_jobs if isinstance(launcher_jobs, int) and launcher_jobs > 0 else 1
        self.n_jobs = _positive(jobs, "hydra.sweeper.n_jobs")
        if self.pruner_config is not None and len(self.directions) != 1:
            raise UserError(
                "hydra.sweeper.pruner needs one objective (Optuna prunes single-objective studies only). "
                "Set hydra.sweeper.pruner=null for a multi-objective sweep"
            )
        if self.objectives is not None and len(self.objectives) != len(self.directions):
            raise UserError(
                f"hydra.sweeper.objectives names {len(self.objectives)} values for {len(self.directions)} "
                "directions. Give one metric per direction"
            )
        if self.objectives is None and len(self.directions) > 1:
            raise UserError(
                "a multi-objective study needs hydra.sweeper.objectives: one metric of metrics.json per direction, "
                "e.g. hydra.sweeper.objectives=[test/acc,wall_time_s]"
            )
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        self.job_idx = 0

    # -- the sweep ---------------------------------------------------------------------------------------------
    def run(self, arguments: list[str]) -> list[JobReturn]:
        space = parse_search_space([*(f"{key}={value}" for key, value in self.params.items()), *arguments])
        if not space.distributions:
            raise UserError("the Optuna search space is empty. Give hydra.sweeper.params or a sweep override")
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        with _sweep_lock(self.sweep_dir):
            with atomic_file(self.sweep_dir / "multirun.yaml", SWEEP_ELSEWHERE) as tmp:
                OmegaConf.save(self.config, tmp)
            return self._run(space)

    def _run(self, space: SearchSpace) -> list[JobReturn]:
        storage = self.storage_url or str(self.sweep_dir / OPTUNA_STUDY_DB)  # a journal file (utils.optuna_storage)
        # Everything the user wrote is checked before the study is opened (a mistake leaves no trial behind).
        pruner = self._build(self.pruner_config, "hydra.sweeper.pruner") if self.pruner_config else None
        sampler = self._sampler(space, previous=0)
        self._check_composes(space.overrides(space.example()))
        study = self._study(storage)
        trials = study.get_trials(deepcopy=False)
        study.sampler = self._sampler(space, previous=len(trials)) if trials else sampler
        if pruner is not None:
            study.pruner = pruner
        rerun = self._interrupted(study, trials)
        done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        missing = max(0, self.n_trials - done - len(rerun))
        log.info(f"Study {study.study_name} in {storage}")
        log.info(f"Sampler: {type(study.sampler).__name__}, pruner: {type(pruner).__name__ if pruner else None}")
        log.info(f"Directions: {self.directions}")
        log.info(
            f"Trials: {done} of {self.n_trials} done, {len(rerun)} interrupted to re-run"
            + (f" ({', '.join(str(n) for n, _ in rerun)})" if rerun else "")
            + f", {missing} new"
        )
        returns: list[JobReturn] = []
        while rerun or missing > 0:
            batch = rerun[: self.n_jobs]
            rerun = rerun[len(batch) :]
            while len(batch) < self.n_jobs and missing > 0:
                batch.append(self._ask(study, space))
                missing -= 1
            returns.extend(self._launch(study, storage, batch))
        self._save_results(study, storage)
        end_sweep(returns)
        return returns

    def _study(self, storage: str) -> optuna.Study:
        try:
            study = optuna.create_study(
                study_name=self.study_name,
                storage=open_storage(storage),
                directions=self.directions,
                load_if_exists=True,
                pruner=optuna.pruners.NopPruner(),  # the jobs prune (their callback); the sweeper never does
            )
        except Exception as err:
            raise UserError(
                f"cannot open the Optuna study in {storage}: {one_line(err)}. Check hydra.sweeper.storage"
            ) from None
        if [d.name.lower() for d in study.directions] != self.directions:
            raise UserError(
                f"the study {study.study_name} in {storage} has directions "
                f"{[d.name.lower() for d in study.directions]}, not {self.directions}. "
                "Give another hydra.sweeper.study_name or hydra.sweep.dir"
            )
        return study

    def _sampler(self, space: SearchSpace, previous: int) -> optuna.samplers.BaseSampler:
        """The configured sampler; a grid sampler gets the grid (and caps n_trials to its size). A re-launch
        shifts a given seed by the trials already in the study, so it does not draw the same values again."""
        config = dict(self.sampler_config)
        if config.get("seed") is not None and previous:
            config["seed"] = int(config["seed"]) + previous
        target = str(config.get("_target_", ""))
        if target.rsplit(".", 1)[-1] == "GridSampler":
            grid = space.grid_values()
            config["search_space"] = grid
            size = math.prod(len(values) for values in grid.values())
            if size < self.n_trials:
                log.info(f"n_trials: {size}, the size of the grid")
                self.n_trials = size
        sampler = self._build(config, "hydra.sweeper.sampler")
        if not isinstance(sampler, optuna.samplers.BaseSampler):
            raise UserError(f"hydra.sweeper.sampler._target_={target} is not an Optuna sampler")
        return sampler

    @staticmethod
    def _build(config: dict[str, Any], key: str) -> Any:
        try:
            return instantiate(config)
        except Exception as err:
            cause = one_line(err.__cause__ or err).rstrip(".?:")
            raise UserError(f"{key} cannot be built: {cause}. Check {key}._target_ and its keys") from None

    def _interrupted(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> list[tuple[int, list[str]]]:
        """The trials an earlier sweep left RUNNING (it was killed; this sweep holds the lock), with their
        overrides: re-run under the same number, in the same job directory, where the job resumes."""
        rerun = []
        for trial in trials:
            if trial.state != TrialState.RUNNING:
                continue
            overrides = trial.user_attrs.get(OVERRIDES_ATTR)
            if overrides:
                rerun.append((trial.number, list(overrides)))
            else:  # not started by this sweeper: nothing says where its job ran
                self._tell(study, trial.number, state=TrialState.FAIL)
                log.warning(f"Trial {trial.number} was left running without recorded overrides: marked failed")
        return rerun

    def _ask(self, study: optuna.Study, space: SearchSpace) -> tuple[int, list[str]]:
        try:
            trial = study.ask(fixed_distributions=space.distributions)
        except ValueError as err:  # e.g. a key that was an interval in the study's earlier trials is now a choice
            for stray in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if OVERRIDES_ATTR not in stray.user_attrs:  # the trial just asked for: nothing ran
                    self._tell(study, stray.number, state=TrialState.FAIL)
            raise UserError(
                f"the search space does not fit the study {study.study_name}'s earlier trials: {one_line(err)}. "
                "Keep the space, or give another hydra.sweep.dir (or hydra.sweeper.study_name)"
            ) from None
        overrides = space.overrides(trial.params)
        trial.set_user_attr(OVERRIDES_ATTR, overrides)
        return trial.number, overrides

    def _launch(self, study: optuna.Study, storage: str, batch: list[tuple[int, list[str]]]) -> list[JobReturn]:
        try:
            for _, overrides in batch:
                self._check_composes(overrides)
        except UserError:
            for number, _ in batch:  # never launched: not left RUNNING for the next launch to re-run
                self._tell(study, number, state=TrialState.FAIL)
            raise
        jobs = [(*overrides, self._handover(storage, study.study_name, number)) for number, overrides in batch]
        returns = list(self.launcher.launch(jobs, initial_job_idx=self.job_idx))
        self.job_idx += len(returns)
        for (number, _), ret in zip(batch, returns):
            self._finish(study, number, ret)
        return returns

    def _check_composes(self, overrides: list[str]) -> None:
        """A trial whose overrides cannot make a config (a key the config lacks) is the search space's fault:
        one line now, not a failure per trial."""
        try:
            self.hydra_context.config_loader.load_sweep_config(master_config=self.config, sweep_overrides=overrides)
        except Exception as err:
            message = " ".join(line.strip() for line in str(err).strip().splitlines()).rstrip(".")
            raise UserError(
                f"the search space makes no config ({' '.join(overrides)}): {message}. "
                "Check hydra.sweeper.params and the sweep overrides"
            ) from None

    def _handover(self, storage: str, study_name: str, number: int) -> str:
        """The override that gives a job its trial: an environment variable (Hydra sets it for the job only)."""
        spec = json.dumps(
            {
                "storage": storage,
                "study_name": study_name,
                "trial": number,
                "pruner": self.pruner_config,
                "report": len(self.directions) == 1,  # Optuna takes per-epoch values of single-objective trials only
            }
        )
        quoted = spec.replace("\\", "\\\\").replace("'", "\\'")
        return f"++hydra.job.env_set.{OPTUNA_TRIAL_ENV}='{quoted}'"

    # -- results -----------------------------------------------------------------------------------------------
    def _finish(self, study: optuna.Study, number: int, ret: JobReturn) -> None:
        """Tell Optuna how trial `number` ended: FAIL for a failed job (or one without a usable value), PRUNED
        when its ``metrics.json`` says so, else its value(s)."""
        job_dir = _job_dir(ret)
        if ret.status != JobStatus.COMPLETED:
            self._tell(study, number, state=TrialState.FAIL)
            log.warning(f"Trial {number} failed: {_failure_reason(ret, job_dir)}")
            return
        summary = _summary(job_dir)
        if (summary.get("optuna_trial") or {}).get("pruned"):
            self._tell(study, number, state=TrialState.PRUNED)  # its value: the last epoch it reported
            log.info(f"Trial {number} was pruned")
            return
        try:
            values = self._values(ret, summary)
        except ValueError as err:
            self._tell(study, number, state=TrialState.FAIL)
            log.warning(f"Trial {number} failed: {err}")
            return
        self._tell(study, number, values=values)
        log.info(f"Trial {number} finished: {values[0] if len(values) == 1 else values}")

    def _values(self, ret: JobReturn, summary: dict[str, Any]) -> list[float]:
        if self.objectives is None:
            raw = ret.return_value
            raws = list(raw) if isinstance(raw, (list, tuple)) else [raw]
            names = ["the job's returned value (monitor.metric's best)"] * len(raws)
        else:
            metrics = summary.get("metrics") or {}
            raws = [metrics.get(name, summary.get(name)) for name in self.objectives]
            names = [f"{name} in {METRICS_FILE}" for name in self.objectives]
        if len(raws) != len(self.directions):
            raise ValueError(f"{len(raws)} values returned for {len(self.directions)} directions")
        values = []
        for name, raw in zip(names, raws):
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{name} is {raw!r}, not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"{name} is {value}")
            values.append(value)
        return values

    @staticmethod
    def _tell(study: optuna.Study, number: int, values: list[float] | None = None, state: Any = None) -> None:
        try:
            study.tell(number, values, state=state, skip_if_finished=True)
        except RuntimeError as err:  # GridSampler stops the study when the grid is done: only optimize() may
            if "Study.stop" not in str(err):
                raise

    def _save_results(self, study: optuna.Study, storage: str) -> None:
        trials = study.get_trials(deepcopy=False)
        counts = {state: sum(t.state == state for t in trials) for state in TrialState}
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "storage": storage}
        named = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
        results.update({f"{name}_trials": counts[state] for state, name in named.items()})
        log.info(
            f"Study {study.study_name}: {len(trials)} trials, {counts[TrialState.COMPLETE]} complete, "
            f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed"
        )
        if counts[TrialState.COMPLETE] == 0:
            log.warning("No trial completed with a value: no best trial")
        elif len(self.directions) == 1:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
            log.info(f"Best trial {best.number}: value {best.value}, parameters {best.params}")
        else:
            front = [{"number": t.number, "params": t.params, "values": t.values} for t in study.best_trials]
            results["solutions"] = front
            log.info(f"Pareto front: {len(front)} trials ({', '.join(str(t['number']) for t in front)})")
        log.info(f"See it: optuna-dashboard {storage}")
        with atomic_file(self.sweep_dir / "optimization_results.yaml", SWEEP_ELSEWHERE) as tmp:
            OmegaConf.save(OmegaConf.create(results), tmp)


def _directions(direction: Any) -> list[str]:
    listed = [direction] if isinstance(direction, str) else list(direction or [])
    names = [str(d).lower() for d in listed]
    if not names or any(name not in DIRECTIONS for name in names):
        raise UserError(
            f"hydra.sweeper.direction={direction} is not minimize or maximize (or a list of them). "
            "Give e.g. hydra.sweeper.direction=maximize"
        )
    return names


def _positive(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{key}={value} must be a whole number of at least 1")
    return value


@contextlib.contextmanager
def _sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """One sweep at a time per directory: a RUNNING trial found at the start then belongs to a dead sweep."""
    import fcntl

    path = sweep_dir / LOCK_FILE
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another sweep is running in {sweep_dir} (it holds {path}). Wait for it to end, "
                "or give another hydra.sweep.dir"
            ) from None
        except OSError:  # a filesystem without locks (some network mounts): go on unguarded
            log.debug(f"no lock on {path}")
        yield


def _job_dir(ret: JobReturn) -> Path | None:
    try:
        return Path(ret.hydra_cfg.hydra.runtime.output_dir)
    except Exception:  # a launcher that could not even start the job
        return None


def _summary(job_dir: Path | None) -> dict[str, Any]:
    try:
        return json.loads((job_dir / METRICS_FILE).read_text()) if job_dir is not None else {}
    except (OSError, ValueError):
        return {}


def _failure_reason(ret: JobReturn, job_dir: Path | None) -> str:
    recorded = read_failure(job_dir) if job_dir is not None else None
    if recorded and recorded.get("error"):
        return str(recorded["error"])
    error = stored_value(ret)
    return one_line(error) if isinstance(error, BaseException) else "the job ended without a result"
