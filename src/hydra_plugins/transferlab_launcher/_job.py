"""One job of ``hydra/launcher=parallel``, in its own process: ``python -m hydra_plugins.transferlab_launcher._job
<payload> <result>``.

The launcher pickles (cloudpickle) what Hydra's basic launcher passes to ``run_job`` (the Hydra context, the task
function, the job's composed config) with Hydra's global state; this process restores the state, runs the job
exactly as the basic launcher would, and writes the `JobReturn` to ``<result>`` (a temporary file renamed into
place, so the launcher never reads half of one). Nothing is imported at module level beyond the standard
library: Hydra imports every module of its plugin packages at start-up.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from transferlab.upstream.hydra_job_return import store_failure, stored_value


def main(payload: Path, result: Path) -> None:
    """Run the job of `payload` and store its `JobReturn` (or, if that cannot be pickled, its outcome) in `result`."""
    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    hydra_context, task_function, config, singleton_state, entry_module = pickle.loads(payload.read_bytes())
    setup_globals()
    Singleton.set_state(singleton_state)
    if entry_module is not None:  # the module a DDP rank of this job re-runs (transferlab.runner)
        from transferlab import cli

        cli.entry_module = entry_module
    ret = run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    try:
        data = cloudpickle.dumps(ret)
    except Exception as err:  # an unpicklable return value or exception: keep the outcome, in words
        error = stored_value(ret)
        store_failure(ret, RuntimeError(f"{type(error).__name__}: {error} ({err})"))
        ret.return_value = None if ret.status.name == "FAILED" else str(ret.return_value)
        data = cloudpickle.dumps(ret)
    from transferlab.utils.errors import report_user_errors
    from transferlab.utils.io import SWEEP_ELSEWHERE, write_bytes_atomic

    report_user_errors(write_bytes_atomic)(result, data, SWEEP_ELSEWHERE)  # the JobReturn, whole or not at all
    sys.stdout.flush()
    sys.stderr.flush()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
