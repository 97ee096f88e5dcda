"""transferlab's Optuna sweeper plugin (``hydra/sweeper=transferlab_optuna``, used by ``sweep=optuna``): a study
on Optuna >= 4 that finishes to a total, resumes interrupted trials and prunes (see sweeper.py)."""
