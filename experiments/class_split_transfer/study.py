"""How transferable are features? Yosinski et al. 2014's class-split study, one command, base networks included.

    python experiments/class_split_transfer/study.py              # embedded shapes: the committed results/
    python experiments/class_split_transfer/study.py --tiny       # seconds: checks the pipeline, not the numbers
    python experiments/class_split_transfer/study.py data=cifar10 data.root=/abs/path/cifar   # full mode

Two Hydra sweeps, as a user would run them: ``experiment=class_split_base`` (a small CNN per half, A and B, and
seed) then ``experiment=class_split_transfer`` (on B: the first n layers of base A or base B, frozen or
fine-tuned, n = 1 … depth). ``tl-report`` tabulates both; this script adds the paper-style figure: test accuracy
on B against n, one line per condition (AnB, AnB+, BnB, BnB+), mean ± std over seeds, with base B at n = 0.
Extra arguments are Hydra overrides for both sweeps (``data=cifar10 data.root=…`` runs the full mode).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

from transferlab.curves import finish_png, pyplot
from transferlab.utils.io import atomic_file

HERE = Path(__file__).resolve().parent
LAYERS = "model.backbone.transfer_layers"
FREEZE = "model.finetune.freeze_transferred"
# The embedded data's size (shapes renders any number of images): 1000 training images per half, 500 test;
# --tiny: a handful. Datasets with files (data=cifar10 …) have the size they have.
EMBEDDED = {False: ["data.train_size=2000", "data.test_size=1000"], True: ["data.train_size=60", "data.test_size=20"]}
# --tiny: small batches, one epoch, one seed, two depths (the first and the last layer).
TINY = [
    "data.batch_size=8",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "seed=0",
]
CONDITIONS = {  # the paper's names: (source half, transferred layers frozen)
    "AnB": ("A", True),
    "AnB+": ("A", False),
    "BnB": ("B", True),
    "BnB+": ("B", False),
}


def script(name: str) -> str:
    """A transferlab console script: the one installed beside this Python (its venv), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def sweep(name: str, sweep_dir: Path, overrides: list[str]) -> float:
    """``tl-train -m experiment=NAME`` into `sweep_dir` (fresh); its wall time in seconds."""
    command = [script("tl-train"), "-m", f"experiment={name}", f"hydra.sweep.dir={sweep_dir}", *overrides]
    shutil.rmtree(sweep_dir, ignore_errors=True)  # a fresh sweep: tl-train would resume unfinished jobs
    print("+", " ".join(command), flush=True)
    started = time.perf_counter()
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed (its output is above)")
    return time.perf_counter() - started


def report(sweep_dir: Path, out: Path, stem: str, *options: str) -> None:
    """``tl-report`` of a sweep: Markdown, CSV and plots under `out` as ``STEM.*``."""
    command = [
        script("tl-report"),
        str(sweep_dir),
        "--metric",
        "test/acc",
        "--markdown",
        str(out / f"{stem}.md"),
        "--csv",
        str(out / f"{stem}.csv"),
        "--plot",
        str(out / f"{stem}.png"),
        *options,
    ]
    print("+", " ".join(command), flush=True)
    if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def accuracy(row: dict[str, str]) -> tuple[float, float]:
    """(mean, std) test accuracy of a tl-report CSV row; std 0 for a single seed."""
    std = row["test/acc_std"]
    return float(row["test/acc_mean"]), float(std) if std not in ("", "nan") else 0.0


def curves(transfer_csv: Path, base_csv: Path) -> tuple[tuple[float, float], dict[str, list[tuple[int, float, float]]]]:
    """Base B's test accuracy, and per condition the (n, mean, std) points, from the two tl-report CSVs."""
    base = {row["half"]: accuracy(row) for row in read_rows(base_csv)}
    lines: dict[str, list[tuple[int, float, float]]] = {name: [] for name in CONDITIONS}
    for row in read_rows(transfer_csv):
        for name, (source, frozen) in CONDITIONS.items():
            if row["source"] == source and (row[FREEZE].lower() == "true") == frozen:
                lines[name].append((int(row[LAYERS]), *accuracy(row)))
    return base["B"], {name: sorted(points) for name, points in lines.items()}


def figure(base_b: tuple[float, float], lines: dict[str, list[tuple[int, float, float]]], path: Path) -> None:
    """The paper's Figure 2 layout: accuracy on B against the number of transferred layers n; n = 0 is base B."""
    plt = pyplot()
    fig, axes = plt.subplots(figsize=(6, 4))
    styles = {"AnB": ("tab:red", "o", "-"), "AnB+": ("tab:red", "s", "--"), "BnB": ("tab:blue", "o", "-")}
    styles["BnB+"] = ("tab:blue", "s", "--")
    axes.errorbar([0], [base_b[0]], yerr=[base_b[1]], color="black", marker="D", capsize=3, label="base B")
    for name, points in lines.items():
        color, marker, dash = styles[name]
        ns, means, stds = zip(*points, strict=True)
        axes.errorbar(ns, means, yerr=stds, color=color, marker=marker, linestyle=dash, capsize=3, label=name)
    depth = max(n for points in lines.values() for n, _, _ in points)
    axes.set_xticks(range(depth + 1))
    finish_png(fig, axes, "layers transferred n (the rest trained from random init)", "test accuracy on B", path)


def summary(base_b: tuple[float, float], lines: dict[str, list[tuple[int, float, float]]], path: Path) -> str:
    """Condition × n table (mean ± std test accuracy on B), the numbers the figure draws."""
    depths = sorted({n for points in lines.values() for n, _, _ in points})
    head = "| condition | n=0 | " + " | ".join(f"n={n}" for n in depths) + " |"
    rows = [head, "|---" * (len(depths) + 2) + "|"]
    rows.append(f"| base B | {base_b[0]:.3f} ± {base_b[1]:.3f} |" + " |" * len(depths))
    for name, points in lines.items():
        cells = {n: f"{mean:.3f} ± {std:.3f}" for n, mean, std in points}
        rows.append(f"| {name} | |" + "".join(f" {cells.get(n, '')} |" for n in depths))
    text = "\n".join(rows) + "\n"
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both sweeps (data=cifar10 data.root=…)")
    parser.add_argument("--work", type=Path, default=Path("outputs/class_split_transfer"), help="sweeps go here")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="tables and figures go here")
    parser.add_argument("--tiny", action="store_true", help="tiny data, 1 epoch, 1 seed, n ∈ {1, 3}: a smoke test")
    args = parser.parse_args()

    work, out = args.work.resolve(), args.out.resolve()
    embedded = not any(item.startswith("data=") for item in args.overrides)
    common = [*(EMBEDDED[args.tiny] if embedded else []), *(TINY if args.tiny else []), *args.overrides]
    out.mkdir(parents=True, exist_ok=True)
    base_seconds = sweep("class_split_base", work / "base", common)
    transfer = [f"base_runs={work / 'base'}", *([f"{LAYERS}=1,3"] if args.tiny else [])]
    transfer_seconds = sweep("class_split_transfer", work / "transfer", [*common, *transfer])
    report(work / "base", out, "base")
    report(work / "transfer", out, "report", "--x", LAYERS, "--plot-metric", "test/acc")
    base_b, lines = curves(out / "report.csv", out / "base.csv")
    figure(base_b, lines, out / "class_split_transfer.png")
    print(summary(base_b, lines, out / "summary.md"))
    print(f"wall time: base {base_seconds:.0f} s, transfer {transfer_seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
