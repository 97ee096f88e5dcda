"""`tl-report DIR…`: turn sweeps into a results table (mean ± std over seeds) and, optionally, plots: the final
metric against the swept key, and learning curves from the runs' TensorBoard events (mean and band over seeds).

Jobs are found by Hydra's ``.hydra/`` folder, transferlab's ``metrics.json`` and ``failed.json``, and a SLURM
sweep's ``slurm_jobs.json`` (jobs submitted but not started have no folder yet). Each job has a status: finished
(``metrics.json``), failed or diverged (``failed.json``), else pending or running as ``squeue`` says where there
is one, else from its folder (none yet: pending; a folder without results: running or stopped). Only finished
jobs enter the means; the others are counted and listed with their status or one-line reason. Jobs are grouped by
their overrides except the ignored keys (``seed`` by default), so the spread over seeds becomes a ± column.
Task-agnostic: metrics are whatever the jobs logged under ``val/…`` and ``test/…`` (accuracy, PSNR, …).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

from transferlab.constants import FAILED_FILE, METRICS_FILE, SLURM_MANIFEST
from transferlab.curves import finish_png, has_events, mean_band, plot_curves, pyplot, read_scalars
from transferlab.sweeps import read_failure
from transferlab.utils.errors import UserError, closest, report_user_errors
from transferlab.utils.io import write_bytes_atomic


@dataclass
class Job:
    """One sweep job: where it ran, its overrides, and its final metrics (None while unfinished)."""

    path: Path
    overrides: dict[str, str]
    metrics: dict[str, float] | None
    monitored: str | None = None  # the metric the run's checkpointing and early stopping watched
    pruned_at_epoch: int | None = None  # an Optuna trial stopped early by its pruner (sweep=optuna)
    status: str = (
        "finished"  # finished, failed, diverged, pending, running, stopped (<SLURM state>), running or stopped
    )
    error: str | None = None  # a failed job's one-line reason (failed.json)
    log: str | None = None  # where a failed job's details are
    slurm_id: str | None = None  # its SLURM job id (slurm_jobs.json)


@dataclass
class Group:
    """Jobs sharing every override but the ignored ones (typically: the seeds of one configuration)."""

    key: tuple[tuple[str, str], ...]
    jobs: list[Job] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [job.metrics[metric] for job in self.jobs if job.metrics and metric in job.metrics]

    def pruned(self) -> int:
        return sum(job.pruned_at_epoch is not None for job in self.jobs)

    def count(self, status: str) -> int:
        return sum(job.status == status for job in self.jobs)


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """``["model.backbone.name=resnet18", "seed=1"]`` → ``{"model.backbone.name": "resnet18", "seed": "1"}``."""
    parsed = {}
    for item in overrides:
        key, _, value = item.partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


# squeue's states of a job that has not ended (anything else has ended: COMPLETED, FAILED, CANCELLED, TIMEOUT, …).
SQUEUE_PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
SQUEUE_RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
STATUS_ORDER = ("finished", "failed", "diverged", "running", "pending", "running or stopped")


def squeue_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """SLURM's state of each of `job_ids` (array tasks as ``123_4``) from ``squeue``, finished jobs included
    while SLURM still lists them; None where there is no squeue (or it does not answer)."""
    if not job_ids or shutil.which("squeue") is None:
        return None
    arrays = ",".join(sorted({job_id.split("_")[0] for job_id in job_ids}))
    base = ["squeue", "--array", "--states=all", "--noheader", "--format=%i|%T"]
    for command in ([*base, f"--jobs={arrays}"], base):  # -j fails outright once one id is forgotten: ask for all
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if result.returncode == 0:
            states = dict(line.strip().split("|", 1) for line in result.stdout.splitlines() if "|" in line)
            return {job_id: states[job_id] for job_id in job_ids if job_id in states}
    return None


def job_status(job_dir: Path, squeue_state: str | None, asked_squeue: bool) -> str:
    """A job's status from its folder and, for a SLURM job, squeue's state (see the module docstring)."""
    if (job_dir / METRICS_FILE).is_file():
        return "finished"
    if squeue_state in SQUEUE_PENDING:  # before failed.json: a failed job re-launched, waiting to run again
        return "pending"
    failure = read_failure(job_dir)
    if failure is not None:  # before squeue's RUNNING: a job still exiting after it recorded its failure
        return "diverged" if failure.get("outcome") == "diverged" else "failed"
    if squeue_state in SQUEUE_RUNNING:
        return "running"
    if asked_squeue:  # squeue answered: the job has ended (or was forgotten) without a result
        return f"stopped ({squeue_state})" if squeue_state else "stopped"
    return "running or stopped" if (job_dir / ".hydra").is_dir() else "pending"


def read_job(job_dir: Path) -> Job:
    """A job from its directory: ``metrics.json`` when finished, else Hydra's ``.hydra/overrides.yaml``."""
    summary_path = job_dir / METRICS_FILE
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        metrics = dict(summary.get("metrics", {}))
        best = summary.get("monitor", {}).get("best")
        if best is not None:
            metrics[f"best {summary['monitor']['metric']}"] = float(best)
        monitored = summary.get("monitor", {}).get("metric")
        pruned_at = (summary.get("optuna_trial") or {}).get("pruned_at_epoch")
        return Job(job_dir, parse_overrides(summary.get("overrides", [])), metrics, monitored, pruned_at)
    overrides_path = job_dir / ".hydra" / "overrides.yaml"
    overrides: list[str] = []
    if overrides_path.is_file():
        from omegaconf import OmegaConf

        overrides = list(OmegaConf.load(overrides_path))  # type: ignore[arg-type]
    return Job(job_dir, parse_overrides(overrides), None)


def find_jobs(dirs: Sequence[Path]) -> list[Job]:
    """Every job under `dirs` (a sweep directory, a single run, or a parent of several), with its status."""
    job_dirs: set[Path] = set()
    submitted: dict[Path, dict[str, Any]] = {}  # job dir → its slurm_jobs.json entry
    for root in dirs:
        if not root.is_dir():
            raise UserError(f"{root} is not a directory. Pass sweep or run directories, e.g. outputs/multirun/<date>")
        markers = (*root.rglob(METRICS_FILE), *root.rglob(FAILED_FILE), *root.rglob(".hydra"))
        job_dirs.update(marker.parent.resolve() for marker in markers)
        for manifest in root.rglob(SLURM_MANIFEST):
            submitted.update(read_manifest(manifest))
    job_dirs.update(submitted)
    if not job_dirs:
        raise UserError(f"no jobs found under {', '.join(map(str, dirs))}. Pass directories tl-train wrote")
    ids = [entry["job_id"] for entry in submitted.values()]
    states = squeue_states(ids)
    jobs = []
    for path in sorted(job_dirs):
        entry = submitted.get(path)
        job = read_job(path)
        if entry is not None:
            job.slurm_id = entry["job_id"]
            job.overrides = job.overrides or parse_overrides(entry["overrides"])
        state = states.get(job.slurm_id) if states is not None and job.slurm_id else None
        job.status = job_status(path, state, asked_squeue=states is not None and job.slurm_id is not None)
        if job.status == "finished" and job.metrics is None:  # metrics.json appeared while we looked
            job.status = "running or stopped"
        failure = read_failure(path) if job.status in ("failed", "diverged") else None
        if failure is not None:
            job.error, job.log = failure.get("error"), failure.get("log")
        jobs.append(job)
    return jobs


def read_manifest(path: Path) -> dict[Path, dict[str, Any]]:
    """The jobs a SLURM sweep submitted (``slurm_jobs.json``, written by its launcher): job dir → entry."""
    try:
        entries = json.loads(path.read_text())["jobs"]
        return {Path(entry["dir"]).resolve(): entry for entry in entries if entry["job_id"] and entry["dir"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a readable list of SLURM jobs. Delete it if the sweep is not SLURM's") from None


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
    return [groups[key] for key in sorted(groups, key=_natural_order)]


def _natural_order(key: tuple[tuple[str, str], ...]) -> tuple[tuple[str, int, float, str], ...]:
    """Rows in the order a reader expects: numbers by value (1, 2, 5, 10, 20, not 1, 10, 2, …), then text."""
    ordered = []
    for name, value in key:
        number = _as_number(value)
        ordered.append((name, 0, number, "") if isinstance(number, float) else (name, 1, 0.0, value))
    return tuple(ordered)


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


def failed_cell(group: Group) -> str:
    """``1 failed, 2 diverged``, or ``0``."""
    counts = [f"{n} {status}" for status in ("failed", "diverged") if (n := group.count(status))]
    return ", ".join(counts) or "0"


def markdown_table(groups: Sequence[Group], keys: Sequence[str], metrics: Sequence[str]) -> str:
    """One row per group (its finished jobs / all its jobs); a "failed" column when some jobs failed or diverged
    and a "pruned" one when Optuna stopped some of them early."""
    any_pruned = any(group.pruned() for group in groups)
    any_failed = any(group.count("failed") + group.count("diverged") for group in groups)
    header = [*keys, "jobs", *(["failed"] if any_failed else []), *(["pruned"] if any_pruned else []), *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        overrides = dict(group.key)
        finished = sum(job.metrics is not None for job in group.jobs)
        cells = [overrides.get(k, "") for k in keys] + [f"{finished}/{len(group.jobs)}"]
        cells += [failed_cell(group)] if any_failed else []
        cells += [str(group.pruned())] if any_pruned else []
        cells += [format_cell(group.values(metric)) for metric in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_text(groups: Sequence[Group], keys: Sequence[str], metrics: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    header = [*keys, "jobs", "finished", "failed", "diverged", "pruned"]
    writer.writerow(header + [f"{m}_{s}" for m in metrics for s in ("mean", "std", "n")])
    for group in groups:
        overrides = dict(group.key)
        row: list[Any] = [overrides.get(k, "") for k in keys]
        row += [len(group.jobs), sum(job.metrics is not None for job in group.jobs)]
        row += [group.count("failed"), group.count("diverged"), group.pruned()]
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


def group_label(group: Group, keys: Sequence[str], fallback: str) -> str:
    """A group's name in a legend: its values of the varying `keys` (``data.examples_per_class=2``)."""
    return ",".join(f"{k}={v}" for k, v in group.key if k in keys) or fallback


def plot(groups: Sequence[Group], metric: str, x_key: str, path: Path) -> None:
    """`metric` (mean ± std) against the swept `x_key`, one line per combination of the other overrides."""
    if not any(x_key in dict(group.key) for group in groups):
        raise UserError(f"--x {x_key} is not an override of these jobs. Use one of: {', '.join(varying_keys(groups))}")
    others = [k for k in varying_keys(groups) if k != x_key]
    lines: dict[str, list[tuple[Any, float, float]]] = {}
    for group in groups:
        overrides = dict(group.key)
        values = group.values(metric)
        if x_key not in overrides or not values:
            continue
        mean, std = mean_std(values)
        point = (_as_number(overrides[x_key]), mean, 0.0 if math.isnan(std) else std)
        lines.setdefault(group_label(group, others, metric), []).append(point)
    if not lines:
        raise UserError(f"no finished job logged {metric}. Pick a metric from the table's columns")
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, points in sorted(lines.items()):
        points.sort(key=lambda p: (isinstance(p[0], str), p[0]))
        xs, means, stds = zip(*points)
        if any(isinstance(x, str) for x in xs):  # a categorical key (e.g. a backbone name)
            xs = tuple(str(x) for x in xs)
        axes.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
    finish_png(figure, axes, x_key, metric, path)


def default_curve_tags(jobs: Sequence[Job]) -> list[str]:
    """The monitored metric(s), then the training and validation loss."""
    return list(dict.fromkeys([*sorted({job.monitored for job in jobs if job.monitored}), "train/loss", "val/loss"]))


def learning_curves(
    groups: Sequence[Group], tags: Sequence[str] | None, stem: Path, notes: list[str]
) -> list[tuple[str, Path]]:
    """One PNG per tag (``<stem>-curve-<tag>.png``), one line per group: mean over its finished jobs' events.

    `tags` None means the defaults, drawn where logged; an explicitly named tag no job logged is an error.
    Jobs without event files (``logger=csv``/``none``) are left out with a note.
    """
    finished = [job for group in groups for job in group.jobs if job.metrics is not None]
    without = [job for job in finished if not has_events(job.path)]
    if without:
        notes.append(
            f"Curves leave out {len(without)} job(s) without TensorBoard events (logger=csv or none): "
            + ", ".join(job.path.name for job in without)
        )
    series = {job.path: read_scalars(job.path) for job in finished if job not in without}
    logged = {tag for scalars in series.values() for tag in scalars}
    for tag in tags or []:
        if series and tag not in logged:
            raise UserError(f"--curves: no job logged {tag}.{closest(tag, logged)} Name scalars the runs logged")
    keys = varying_keys(groups)
    drawn = []
    for tag in [t for t in (tags or default_curve_tags(finished)) if t in logged]:
        curves = []
        for group in groups:
            runs = [series[job.path][tag] for job in group.jobs if tag in series.get(job.path, {})]
            if runs:
                curves.append(mean_band(f"{group_label(group, keys, 'all jobs')} (n={len(runs)})", runs))
        path = stem.with_name(f"{stem.stem}-curve-{tag.replace('/', '_')}.png")
        plot_curves(tag, curves, path)
        drawn.append((f"{tag} per step", path))
    return drawn


def markdown_image(title: str, image: Path, markdown: Path) -> str:
    """``![title](path)`` with `image`'s path relative to the Markdown file, so the pair can move together."""
    relative = os.path.relpath(image.resolve(), markdown.resolve().parent)
    return f"![{title}]({quote(Path(relative).as_posix())})"


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
    parser.add_argument("--markdown", type=Path, help="Markdown path (default: <first DIR>/report.md)")
    parser.add_argument(
        "--plot",
        nargs="?",
        const=True,
        metavar="PNG",
        help="draw plots: --plot-metric against --x at PNG (default: <first DIR>/report.png) and learning "
        "curves next to it (<PNG stem>-curve-<metric>.png)",
    )
    parser.add_argument(
        "--x", dest="x_key", help="swept override on the plot's x axis (default: the one swept key, if one)"
    )
    parser.add_argument("--plot-metric", help="metric to plot (default: the first --metric or the monitored best)")
    parser.add_argument(
        "--curves",
        type=lambda text: [tag for tag in text.split(",") if tag],
        help="comma-separated scalars for learning curves (default: the monitored metric, train/loss, val/loss)",
    )
    return parser


def report(argv: Sequence[str] | None = None) -> str:
    """Build the report for `argv`; return the Markdown (also written to stdout by `main`)."""
    args = build_parser().parse_args(argv)
    plot_path = args.dirs[0] / "report.png" if args.plot is True else args.plot and Path(args.plot)
    if plot_path and plot_path.suffix.lower() != ".png":
        raise UserError(f"--plot {plot_path}: not a .png file name. Give a PNG path, or --plot alone after the DIRs")
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
    text.append("status: " + status_counts(jobs))
    if constant:
        text.append(f"common overrides: {' '.join(constant)}")
    text += ["", markdown_table(groups, keys, metrics)]
    pruned = [job for job in jobs if job.pruned_at_epoch is not None]
    if pruned:
        text += [
            "",
            f"Pruned by Optuna: {len(pruned)} of {len(jobs)} trials, stopped early (at the epoch shown) as "
            "clearly worse than the others; their metrics come from fewer epochs:",
        ]
        text += [f"- {job.path.name} (epoch {job.pruned_at_epoch + 1})" for job in pruned]
    failed = [job for job in jobs if job.status in ("failed", "diverged")]
    if failed:
        text += ["", f"Failed jobs (left out of the means; the reason from their {FAILED_FILE}):"]
        text += [f"- {job.path}: {job.status}: {job.error or 'no reason recorded'}" for job in failed]
    unfinished = [job for job in jobs if job.metrics is None and job not in failed]
    if unfinished:
        text += ["", f"Unfinished jobs (no {METRICS_FILE} yet):"]
        text += [
            f"- {job.path}: {job.status}" + (f" (SLURM job {job.slurm_id})" if job.slurm_id else "")
            for job in unfinished
        ]

    markdown_path = args.markdown or args.dirs[0] / "report.md"
    csv_path = args.csv or args.dirs[0] / "report.csv"
    if plot_path:
        figures = draw_plots(args, groups, metrics, plot_path, notes := [])
        text += notes and ["", *notes]
        for title, path in figures:
            text += ["", markdown_image(title, path, markdown_path)]
    csv_bytes, markdown_bytes = csv_text(groups, keys, metrics).encode(), ("\n".join(text) + "\n").encode()
    write_bytes_atomic(csv_path, csv_bytes, elsewhere="--csv <a file on another disk>")
    write_bytes_atomic(markdown_path, markdown_bytes, elsewhere="--markdown <a file on another disk>")
    text += ["", f"Markdown: {markdown_path}", f"CSV: {csv_path}"]
    return "\n".join(text)


def status_counts(jobs: Sequence[Job]) -> str:
    """``3 finished, 1 diverged, 2 pending``: every status present, in a fixed order."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    order = [*STATUS_ORDER, *sorted(set(counts) - set(STATUS_ORDER))]
    return ", ".join(f"{counts[status]} {status}" for status in order if status in counts)


def draw_plots(
    args: argparse.Namespace, groups: Sequence[Group], metrics: Sequence[str], path: Path, notes: list[str]
) -> list[tuple[str, Path]]:
    """The metric-against-key plot (with --x, or when one key is swept) and the learning curves: ``[(title, png)]``."""
    if not any(job.metrics is not None for group in groups for job in group.jobs):
        raise UserError("--plot: no job has finished yet, nothing to plot. Run it again when one has")
    keys = varying_keys(groups)
    x_key = args.x_key or (keys[0] if len(keys) == 1 else None)  # only seeds vary: learning curves alone
    if x_key is None and keys:
        notes.append(f"No plot against a swept key: these jobs sweep {', '.join(keys)}; pass --x KEY to pick one.")
    figures = []
    if x_key:
        plot_metric = args.plot_metric or (args.metrics[0] if args.metrics else metrics[0])
        plot(groups, plot_metric, x_key, path)
        figures.append((f"{plot_metric} against {x_key}", path))
    return figures + learning_curves(groups, args.curves, path, notes)


@report_user_errors
def main() -> None:
    """Console entry point ``tl-report``."""
    print(report(sys.argv[1:]))


if __name__ == "__main__":
    main()
