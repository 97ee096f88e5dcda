"""transferlab's Optuna sweeper plugin (``hydra/sweeper=transferlab_optuna``, used by ``sweep=optuna``): Hydra's,
plus pruning (see sweeper.py)."""
