"""Source-task CNN transferred vs trained from scratch: the small CNN and ResNet-18, one command, source runs included.

    python experiments/small_cnn_transfer/study.py                  # embedded (offline): shapes → digits; the table
    python experiments/small_cnn_transfer/study.py --full DATA_DIR  # CIFAR-100 → CIFAR-10 (DATA_DIR/cifar/...)
    python experiments/small_cnn_transfer/study.py --tiny           # seconds: checks the pipeline, not the numbers

For each network it trains a source run from random init (``tl-train -m experiment=small_cnn_transfer_source``),
then sweeps the target task (``tl-train -m experiment=small_cnn_transfer``): scratch vs the source run's trunk,
each with the trunk frozen under a new FC head (linear_probe) or fine-tuned whole (full), 3 seeds, same budget.
``tl-report`` turns the sweeps into the tables (mean ± std over seeds) and plots in ``--out``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "own_data"))

import make_datasets  # noqa: E402

from transferlab.utils.errors import report_user_errors  # noqa: E402
from transferlab.utils.extras import require  # noqa: E402

NETWORKS = ("small_cnn", "resnet18")
COMMON = ["trainer.enable_progress_bar=false"]
# seconds, not minutes: one seed, 2 steps, 1 epoch; the jobs and tables are the real ones
TINY = [
    "seed=0",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.batch_size=8",
    "data.num_workers=0",
]
# Embedded mode: 3,000 source shapes (300 per class); 30 target digits per class, in batches of 16 (more SGD steps)
SHAPES = ["data=shapes", "data.train_size=3000"]
DIGITS = ["data=imagefolder", "data.examples_per_class=30", "data.batch_size=16"]
TINY_SHAPES = ["data.train_size=60", "data.test_size=20"]
TINY_DIGITS_PER_CLASS = 6


def tl(*command: str, cwd: Path) -> None:
    """Run a transferlab CLI as a user types it; stop the study with its error when it fails."""
    print("$", " ".join(command), flush=True)
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed (in {cwd}):\n{result.stderr[-3000:]}")


def data_overrides(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """tl-train overrides for the source and the target data. Full mode: the configs' own CIFAR-100 → CIFAR-10.
    Embedded mode: the embedded shapes → scikit-learn's handwritten digits, written here as an ImageFolder."""
    if args.full is not None:
        return [f"paths.data_dir={args.full.resolve()}"], [f"paths.data_dir={args.full.resolve()}"]
    digits = make_datasets.write("digits", args.work / "datasets", TINY_DIGITS_PER_CLASS if args.tiny else None)
    root = f"data.root={digits.relative_to(args.work)}"  # relative: tl-train runs in args.work
    if args.tiny:
        return ["data=shapes", *TINY_SHAPES], ["data=imagefolder", root]
    return SHAPES, [*DIGITS, root]


@report_user_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("outputs/small_cnn_transfer"), help="runs go here")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="tables and plots go here")
    parser.add_argument("--full", type=Path, metavar="DATA_DIR", help="full mode: CIFAR batches in DATA_DIR/cifar")
    parser.add_argument("--tiny", action="store_true", help="1 seed, 2 steps: a smoke test of the whole pipeline")
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    args = parser.parse_args()
    if args.full is None:  # embedded mode: the target is scikit-learn's digits
        require("experiments/small_cnn_transfer", "experiments", make_datasets.SKLEARN)
    if (args.work / "sources").exists() or (args.work / "target").exists():
        raise SystemExit(f"error: {args.work} holds an earlier study. Remove it or pass another --work")
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    extra = [*COMMON, *(TINY if args.tiny else [])]
    source_data, target_data = data_overrides(args)
    started = time.perf_counter()

    networks = f"model.backbone.name={','.join(args.networks)}"
    sources = [networks, *source_data, *extra, "hydra.sweep.dir=sources"]
    tl("tl-train", "-m", "experiment=small_cnn_transfer_source", *sources, cwd=args.work)
    tl("tl-report", "sources", "--markdown", str(out / "sources.md"), "--csv", str(out / "sources.csv"), cwd=args.work)
    for name in args.networks:  # relative paths: the tables show `sources/<network>/...`, not this machine's
        weights = f"source_weights=sources/{name}/checkpoints/best.ckpt"
        targets = [f"model.backbone.name={name}", weights, *target_data, *extra, f"hydra.sweep.dir=target/{name}"]
        tl("tl-train", "-m", "experiment=small_cnn_transfer", *targets, cwd=args.work)
    tables = ["--markdown", str(out / "report.md"), "--csv", str(out / "report.csv"), "--plot", str(out / "report.png")]
    plot = ["--x", "model.finetune.mode", "--plot-metric", "test/acc", "--ignore", "seed", "--ignore", "source_weights"]
    tl("tl-report", *[f"target/{name}" for name in args.networks], *tables, *plot, cwd=args.work)
    minutes = (time.perf_counter() - started) / 60
    print((out / "sources.md").read_text(), (out / "report.md").read_text(), sep="\n")
    print(f"study: {minutes:.1f} min wall; tables in {out}")


if __name__ == "__main__":
    main()
