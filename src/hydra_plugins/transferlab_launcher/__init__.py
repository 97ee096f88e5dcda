"""transferlab's Hydra launcher plugin (see slurm.py)."""
