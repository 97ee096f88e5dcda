"""Your own small dataset, with the defaults: transferlab vs pixel baselines vs a linear probe, one table.

    python experiments/own_data/study.py                 # the committed table (CPU: ~10 minutes)
    python experiments/own_data/study.py --tiny          # seconds: checks the pipeline, not the numbers

For each small real dataset that ships with the dependencies (`make_datasets.py`), written as an ImageFolder,
it runs exactly what a user would — ``tl-train data=imagefolder data.root=DIR`` with no other setting — and
scores the same test split with scikit-learn's SVC and logistic regression on raw pixels and with a linear
probe on the ImageNet EfficientNet-Lite0 features at the resolution transferlab chose (`baselines.py`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import baselines  # noqa: E402
import make_datasets  # noqa: E402

from transferlab.data.imagefolder import auto_image_size  # noqa: E402
from transferlab.utils.errors import report_user_errors  # noqa: E402
from transferlab.utils.extras import require  # noqa: E402
from transferlab.utils.io import atomic_file  # noqa: E402

TINY = ["trainer.max_epochs=1", "data.batch_size=8", "data.num_workers=0", "trainer.enable_progress_bar=false"]


def train(root: Path, run_dir: Path, tiny: bool) -> tuple[dict, float]:
    """``tl-train data=imagefolder data.root=ROOT`` as a user types it; its metrics.json and wall time."""
    command = ["tl-train", "data=imagefolder", f"data.root={root}", "logger=csv", f"hydra.run.dir={run_dir}"]
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: tl-train would resume an unfinished one
    started = time.perf_counter()
    result = subprocess.run([*command, *(TINY if tiny else [])], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return json.loads((run_dir / "metrics.json").read_text()), time.perf_counter() - started


@report_user_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("outputs/own_data"), help="datasets and runs go here")
    parser.add_argument("--out", type=Path, default=HERE / "results.md", help="the table (markdown)")
    parser.add_argument("--tiny", action="store_true", help="6 images per class, 1 epoch: a smoke test")
    args = parser.parse_args()
    require("experiments/own_data", "experiments", baselines.SKLEARN)  # before any dataset is written

    rows = []
    for name in sorted(make_datasets.DATASETS):
        root = make_datasets.write(name, args.work / "datasets", per_class=6 if args.tiny else None)
        size = auto_image_size(str(root))
        reference = baselines.scores(root, size)
        metrics, seconds = train(root, args.work / "runs" / name, args.tiny)
        rows.append((name, size, reference, metrics["metrics"]["test/acc"], seconds))
        print(f"{name}: {size} px, transferlab {rows[-1][3]:.4f} in {seconds:.0f} s, {reference}", flush=True)

    lines = [
        "| dataset | size chosen | SVC (pixels) | logistic regression (pixels) | linear probe (ImageNet) "
        "| transferlab defaults | wall time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, size, ref, acc, seconds in rows:
        lines.append(
            f"| {name} | {size} px | {ref['svc_pixels']:.4f} | {ref['logreg_pixels']:.4f} "
            f"| {ref['linear_probe_imagenet']:.4f} | **{acc:.4f}** | {seconds:.0f} s |"
        )
    with atomic_file(args.out) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
