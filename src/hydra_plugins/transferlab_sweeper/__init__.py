"""transferlab's default sweeper (Hydra's ``hydra/sweeper=basic``, replaced): Hydra's basic grid sweeper, except that a
failing job does not end the sweep (see basic.py)."""
