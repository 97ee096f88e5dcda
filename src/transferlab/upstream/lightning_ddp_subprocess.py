"""Lightning's ``strategies.launchers.subprocess_script._hydra_subprocess_cmd``: the command of a DDP child rank.

Why: Lightning's DDP launcher starts ranks > 0 on a node with this function when Hydra runs the job. Its own
version re-runs ``sys.argv``, which inside a multirun (``-m seed=0,1``) is the whole sweep, and under a submitit
worker is not a transferlab command at all; `transferlab.runner.ddp_child_command` re-runs exactly this job.
Lightning has no setting for the command, and its launcher looks the function up in this module's namespace at
launch time (``_SubprocessScriptLauncher._call_children_scripts`` calls ``_hydra_subprocess_cmd(local_rank)``),
so replacing the module attribute is enough.
Without it: a multi-GPU sweep's child ranks each run the whole sweep (tests/test_distributed.py).
Checked: pytorch-lightning 2.0–2.6.6, lightning 2.6.6.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

ChildCommand = Callable[[int], tuple[Sequence[str], str]]


def install(command: ChildCommand) -> None:
    """Make Lightning's DDP launcher start child ranks with `command(local_rank) -> (argv, cwd)`."""
    from pytorch_lightning.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = command
