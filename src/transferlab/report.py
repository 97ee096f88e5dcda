"""`tl-report DIR…`: turn sweeps into a results table (mean ± std over seeds) and, optionally, a plot.

Jobs are found by Hydra's ``.hydra/`` folder or transferlab's ``metrics.json``; a job without ``metrics.json``
did not finish (failed, killed or still running) and is listed as such rather than dropped. Jobs are grouped by
their overrides except the ignored keys (``seed`` by default), so the spread over seeds becomes a ± column.
Task-agnostic: metrics are whatever the jobs logged under ``val/…`` and ``test/…`` (accuracy, PSNR, …).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from transferlab.constants import METRICS_FILE
from transferlab.utils.errors import UserError, closest, report_user_errors
from transferlab.utils.io import atomic_file


@dataclass
class Job:
    """One sweep job: where it ran, its overrides, and its final metrics (None while unfinished)."""

    path: Path
    overrides: dict[str, str]
    metrics: dict[str, float] | None


@dataclass
class Group:
    """Jobs sharing every override but the ignored ones (typically: the seeds of one configuration)."""

    key: tuple[tuple[str, str], ...]
    jobs: list[Job] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [job.metrics[metric] for job in self.jobs if job.metrics and metric in job.metrics]


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """``["model.backbone.name=resnet18", "seed=1"]`` → ``{"model.backbone.name": "resnet18", "seed": "1"}``."""
    parsed = {}
    for item in overrides:
        key, _, value = item.partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


def read_job(job_dir: Path) -> Job:
    """A job from its directory: ``metrics.json`` when finished, else Hydra's ``.hydra/overrides.yaml``."""
    summary_path = job_dir / METRICS_FILE
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        metrics = dict(summary.get("metrics", {}))
        best = summary.get("monitor", {}).get("best")
        if best is not None:
            metrics[f"best {summary['monitor']['metric']}"] = float(best)
        return Job(job_dir, parse_overrides(summary.get("overrides", [])), metrics)
    overrides_path = job_dir / ".hydra" / "overrides.yaml"
    overrides: list[str] = []
    if overrides_path.is_file():
        from omegaconf import OmegaConf

        overrides = list(OmegaConf.load(overrides_path))  # type: ignore[arg-type]
    return Job(job_dir, parse_overrides(overrides), None)


def find_jobs(dirs: Sequence[Path]) -> list[Job]:
    """Every job under `dirs` (a sweep directory, a single run, or a parent of several)."""
    job_dirs: set[Path] = set()
    for root in dirs:
        if not root.is_dir():
            raise UserError(f"{root} is not a directory. Pass sweep or run directories, e.g. outputs/multirun/<date>")
        job_dirs.update(marker.parent.resolve() for marker in (*root.rglob(METRICS_FILE), *root.rglob(".hydra")))
    if not job_dirs:
        raise UserError(f"no jobs found under {', '.join(map(str, dirs))}. Pass directories tl-train wrote")
    return [read_job(path) for path in sorted(job_dirs)]


def default_metrics(jobs: Sequence[Job]) -> list[str]:
    """The monitored best plus final ``val/*`` and ``test/*`` scalars (not per-class breakdowns)."""
    names = {name for job in jobs if job.metrics for name in job.metrics}
    best = sorted(name for name in names if name.startswith("best "))
    final = sorted(name for name in names if name.split("/")[0] in ("val", "test") and name.count("/") == 1)
    return best + final


def group_jobs(jobs: Sequence[Job], ignore: Sequence[str]) -> list[Group]:
    groups: dict[tuple[tuple[str, str], ...], Group] = {}
    for job in jobs:
        key = tuple(sorted((k, v) for k, v in job.overrides.items() if k not in ignore))
        groups.setdefault(key, Group(key)).jobs.append(job)
    return [groups[key] for key in sorted(groups)]


def varying_keys(groups: Sequence[Group]) -> list[str]:
    """Override keys whose value differs between groups: the table's columns (constant ones go in a note)."""
    keys = sorted({k for group in groups for k, _ in group.key})
    return [k for k in keys if len({dict(group.key).get(k, "") for group in groups}) > 1]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (nan for a single value: one seed says nothing about spread)."""
    mean = statistics.fmean(values) if values else math.nan
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, std


def format_cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    spread = f" ± {std:.4f}" if not math.isnan(std) else ""
    return f"{mean:.4f}{spread} (n={len(values)})"


def markdown_table(groups: Sequence[Group], keys: Sequence[str], metrics: Sequence[str]) -> str:
    header = [*keys, "jobs", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        overrides = dict(group.key)
        finished = sum(job.metrics is not None for job in group.jobs)
        cells = [overrides.get(k, "") for k in keys] + [f"{finished}/{len(group.jobs)}"]
        cells += [format_cell(group.values(metric)) for metric in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_text(groups: Sequence[Group], keys: Sequence[str], metrics: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*keys, "jobs", "finished"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std", "n")])
    for group in groups:
        overrides = dict(group.key)
        row: list[Any] = [overrides.get(k, "") for k in keys]
        row += [len(group.jobs), sum(job.metrics is not None for job in group.jobs)]
        for metric in metrics:
            values = group.values(metric)
            mean, std = mean_std(values)
            row += [f"{mean:.6g}", f"{std:.6g}", len(values)]
        writer.writerow(row)
    return out.getvalue()


def _as_number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def plot(groups: Sequence[Group], metric: str, x_key: str, path: Path) -> None:
    """`metric` (mean ± std) against the swept `x_key`, one line per combination of the other overrides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(x_key in dict(group.key) for group in groups):
        raise UserError(f"--x {x_key} is not an override of these jobs. Use one of: {', '.join(varying_keys(groups))}")
    lines: dict[str, list[tuple[Any, float, float]]] = {}
    for group in groups:
        overrides = dict(group.key)
        values = group.values(metric)
        if x_key not in overrides or not values:
            continue
        label = ",".join(f"{k}={v}" for k, v in group.key if k != x_key and k in varying_keys(groups)) or metric
        mean, std = mean_std(values)
        lines.setdefault(label, []).append((_as_number(overrides[x_key]), mean, 0.0 if math.isnan(std) else std))
    if not lines:
        raise UserError(f"no finished job logged {metric}. Pick a metric from the table's columns")
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, points in sorted(lines.items()):
        points.sort(key=lambda p: (isinstance(p[0], str), p[0]))
        xs, means, stds = zip(*points)
        if any(isinstance(x, str) for x in xs):  # a categorical key (e.g. a backbone name)
            xs = tuple(str(x) for x in xs)
        axes.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
    axes.set_xlabel(x_key)
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as transferlab's one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}. See tl-report --help")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tl-report",
        description="Aggregate tl-train sweeps into a mean ± std table (Markdown to stdout, CSV to a file).",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="sweep or run directories")
    parser.add_argument("--metric", action="append", dest="metrics", help="metric column (repeatable); default: all")
    parser.add_argument("--ignore", action="append", default=None, help="override keys not to group by (default: seed)")
    parser.add_argument("--csv", type=Path, help="CSV path (default: <first DIR>/report.csv)")
    parser.add_argument("--plot", type=Path, help="write a PNG plot of --plot-metric against --x here")
    parser.add_argument(
        "--x", dest="x_key", help="swept override key on the plot's x axis, e.g. data.examples_per_class"
    )
    parser.add_argument("--plot-metric", help="metric to plot (default: the first --metric or the monitored best)")
    return parser


def report(argv: Sequence[str] | None = None) -> str:
    """Build the report for `argv`; return the Markdown (also written to stdout by `main`)."""
    args = build_parser().parse_args(argv)
    if args.plot and not args.x_key:
        raise UserError("--plot needs --x KEY, the swept override on the x axis (e.g. --x data.examples_per_class)")
    jobs = find_jobs(args.dirs)
    ignore = args.ignore if args.ignore is not None else ["seed"]
    groups = group_jobs(jobs, ignore)
    metrics = args.metrics or default_metrics(jobs)
    known = {name for job in jobs if job.metrics for name in job.metrics}
    for name in args.metrics or []:
        if known and name not in known:
            raise UserError(f"no job has the metric {name}.{closest(name, known)} Pass --metric with a logged metric")
    keys = varying_keys(groups)
    constant = sorted({f"{k}={v}" for group in groups for k, v in group.key if k not in keys})

    text = [f"{len(jobs)} jobs in {len(groups)} groups (grouped by overrides except {', '.join(ignore) or 'none'})"]
    if constant:
        text.append(f"common overrides: {' '.join(constant)}")
    text += ["", markdown_table(groups, keys, metrics)]
    unfinished = [job for job in jobs if job.metrics is None]
    if unfinished:
        text += ["", f"Unfinished jobs (no {METRICS_FILE}: failed, killed or still running):"]
        text += [f"- {job.path}" for job in unfinished]

    csv_path = args.csv or args.dirs[0] / "report.csv"
    with atomic_file(csv_path) as tmp:
        tmp.write_text(csv_text(groups, keys, metrics))
    text += ["", f"CSV: {csv_path}"]
    if args.plot:
        plot_metric = args.plot_metric or (args.metrics[0] if args.metrics else metrics[0])
        plot(groups, plot_metric, args.x_key, args.plot)
        text.append(f"Plot: {args.plot}")
    return "\n".join(text)


@report_user_errors
def main() -> None:
    """Console entry point ``tl-report``."""
    print(report(sys.argv[1:]))


if __name__ == "__main__":
    main()
