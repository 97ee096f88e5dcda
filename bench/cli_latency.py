"""How fast the commands answer what the config alone decides (issue: instant answers, ≤ 1.5 s on 2 cores).

    python bench/cli_latency.py [--repeats 7]

Runs each command as a user would (a fresh process, from an empty folder), interleaved, and prints the
median wall time with its min–max spread. Nothing here imports torch; a run that does is a regression.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = [
    ["tl-train", "--help"],
    ["tl-train", "--cfg", "job"],
    ["tl-train", "data=nosuch"],
    ["tl-train", "trainer.max_step=3"],
    ["tl-train", "trainer.max_epochs=-3"],
    ["tl-eval"],
    ["tl-report", "nosuchdir"],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    times: dict[str, list[float]] = {" ".join(c): [] for c in COMMANDS}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.repeats):
            for command in COMMANDS:
                started = time.perf_counter()
                subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd=cwd, capture_output=True, check=False)
                times[" ".join(command)].append(time.perf_counter() - started)
    print(f"| command | median s | min–max s | (n = {args.repeats}) |\n|---|---|---|---|")
    for name, values in times.items():
        print(f"| `{name}` | {statistics.median(values):.2f} | {min(values):.2f}–{max(values):.2f} | |")


if __name__ == "__main__":
    main()
