"""Values several layers read: one home each, and nothing heavy imported (the torch-free CLI and `tl-report`
read them too)."""

from __future__ import annotations

# Input normalisation of every ImageNet-pretrained network torchvision and timm ship (RGB, [0, 1] scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RESIZE_RATIO = 256 / 224  # ImageNet's evaluation: short side to 256, centre 224 crop

# torch.compile modes that replay CUDA graphs (inductor's cudagraph trees) on a GPU: their outputs live in a
# memory pool that later compiled calls overwrite (see `transferlab.utils.compile`).
CUDA_GRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")
AUTO_IDLE = "auto_idle"  # cpu_threads: the cores idle when the run starts (transferlab.utils.threads)

# What a run directory holds.
FAILED_FILE = "failed.json"  # a sweep job that raised: its one-line reason and log (transferlab.sweeps)
METRICS_FILE = "metrics.json"  # a run's results, written last (atomically): its presence marks the run finished
SLURM_MANIFEST = "slurm_jobs.json"  # a SLURM sweep's submitted jobs: id, directory, overrides (in the sweep dir)
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"
PREDICTIONS_FILE = "predictions.csv"  # tl-predict's output for classifiers
PREDICT_SKIPPED_FILE = "skipped_files.json"  # tl-predict: the inputs it could not read (path, reason), if any
CKPT_PATH_HINT = f"Pass ckpt_path=<run dir>/{CHECKPOINT_DIR}/{BEST_CHECKPOINT}"  # what every checkpoint error says

# Image files every reader accepts (torchvision's ImageFolder list, so folders read the same everywhere).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# How transferlab's Optuna sweeper hands a trial to its job (hydra_plugins.transferlab_optuna): an environment
# variable holding JSON {"storage", "study_name", "trial", "pruner", "report"}, set per job through hydra.job.env_set.
OPTUNA_TRIAL_ENV = "TL_OPTUNA_TRIAL"
OPTUNA_STUDY_DB = (
    "optuna.db"  # the study's Optuna journal file in the sweep directory, when hydra.sweeper.storage is null
)
