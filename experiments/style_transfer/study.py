"""Which loss network stylizes offline, over 3 seeds: the whole study in one command.

    python experiments/style_transfer/study.py            # the committed results/ (2 CPU cores: ~15 minutes)
    python experiments/style_transfer/study.py --tiny     # a minute: checks the pipeline, not the numbers

Runs exactly what a user would: ``tl-train -m experiment=style_transfer`` over both loss networks and three
seeds (one Hydra sweep; finished jobs of an interrupted study are skipped when it is run again), then
``tl-report`` (the table; learning curves per loss network) and ``compare.py`` (every stylizer under every loss
network, mean ± std over seeds, and the output grid). Everything lands in --out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOSS_NETWORKS = {"vgg16": "vgg16 (random features)", "efficientnet_lite0": "efficientnet_lite0 (ImageNet)"}
SEEDS = (0, 1, 2)
TINY = [
    "data.patch_size=32",
    "data.batch_size=2",
    "data.train_patches=4",
    "data.val_patches=2",
    "trainer.max_epochs=2",
    "model.style_size=64",
    "model.net.channels=4",
    "model.net.res_blocks=1",
    "trainer.log_every_n_steps=1",
]
CURVES = "train/loss_content_step,train/loss_style_step"  # 30 points per run (every 10 steps)


def run(command: list[str]) -> None:
    """Run a transferlab command as a user would; its failure ends the study with its own error line."""
    print("$", " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"error: `{' '.join(command)}` failed (its output is above); fix it and rerun the study")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("outputs/style_study"), help="the sweep goes here")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="tables, curves and grid")
    parser.add_argument("--tiny", action="store_true", help="2 seeds, tiny network and patches: a smoke test")
    args = parser.parse_args()
    seeds = SEEDS[:2] if args.tiny else SEEDS
    sweep = args.work.resolve() / "sweep"
    started = time.perf_counter()
    run(
        [
            "tl-train",
            "-m",
            "experiment=style_transfer",
            f"model/loss_network={','.join(LOSS_NETWORKS)}",
            f"seed={','.join(map(str, seeds))}",
            "logger=tensorboard",
            f"hydra.sweep.dir={sweep}",
            *(TINY if args.tiny else []),
        ]
    )
    trained = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    table = ["--markdown", str(out / "report.md"), "--csv", str(out / "report.csv")]
    run(["tl-report", str(sweep), *table])
    dirs = job_dirs(sweep, seeds)
    for network in LOSS_NETWORKS:  # one figure per loss network: their losses differ by orders of magnitude
        jobs = [str(dirs[network, seed]) for seed in seeds]
        aside = [f"--markdown={args.work.resolve() / network}.md", f"--csv={args.work.resolve() / network}.csv"]
        run(["tl-report", *jobs, *aside, "--plot", str(out / f"{network}.png"), "--curves", CURVES])
    runs = []
    for network, label in LOSS_NETWORKS.items():
        runs += [f"--run={label}={dirs[network, seed] / 'checkpoints' / 'best.ckpt'}" for seed in seeds]
    run([sys.executable, str(HERE / "compare.py"), *runs, "--out", str(out)])
    print(f"study: {len(LOSS_NETWORKS) * len(seeds)} jobs trained in {trained:.0f} s; results in {out}")


def job_dirs(sweep: Path, seeds: tuple[int, ...]) -> dict[tuple[str, int], Path]:
    """Each sweep job's directory by (loss network, seed), read once from the jobs' overrides."""
    from transferlab.report import find_jobs

    jobs = find_jobs([sweep])
    dirs = {(job.overrides.get("model/loss_network"), job.overrides.get("seed")): job.path for job in jobs}
    for network in LOSS_NETWORKS:
        for seed in seeds:
            if (network, str(seed)) not in dirs:
                raise SystemExit(f"error: no job with model/loss_network={network} seed={seed} under {sweep}; rerun")
    return {(network, seed): dirs[network, str(seed)] for network in LOSS_NETWORKS for seed in seeds}


if __name__ == "__main__":
    main()
