"""Learning curves for `tl-report --plot`: a metric per step from each run's TensorBoard events, averaged over the
runs of a group (the seeds of one configuration) with a min–max band.

A band from min to max rather than ± std: sweeps have two or three seeds, where a standard deviation says
little and hides the runs' actual spread; min–max shows exactly where every seed went.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferlab.utils.io import atomic_open

EVENTS_GLOB = "events.out.tfevents.*"
BAND = "min–max over seeds"


@dataclass(frozen=True)
class Curve:
    """One group's curve: at each step, the mean over the runs that logged that step, and their min and max."""

    label: str
    steps: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    runs: int


def has_events(run_dir: Path) -> bool:
    return any(run_dir.rglob(EVENTS_GLOB))


def read_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every scalar in the TensorBoard event files under `run_dir`.

    A step logged twice (a run resumed from ``last.ckpt`` repeats the steps after that checkpoint) keeps
    the value written last, which is the one of the run that went on.
    """
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    series: dict[str, dict[int, float]] = {}
    for folder in sorted({path.parent for path in run_dir.rglob(EVENTS_GLOB)}):
        events = EventAccumulator(str(folder), size_guidance={SCALARS: 0})  # 0: keep every point
        events.Reload()
        for tag in events.Tags()[SCALARS]:
            for event in sorted(events.Scalars(tag), key=lambda e: e.wall_time):
                series.setdefault(tag, {})[event.step] = event.value
    return series


def mean_band(label: str, runs: Sequence[Mapping[int, float]]) -> Curve:
    """Average `runs` (each ``{step: value}``) step by step; a step only some runs reached (one stopped early)
    averages those."""
    steps = sorted({step for run in runs for step in run})
    at_step = [[run[step] for run in runs if step in run] for step in steps]
    return Curve(
        label=label,
        steps=steps,
        mean=[sum(values) / len(values) for values in at_step],
        low=[min(values) for values in at_step],
        high=[max(values) for values in at_step],
        runs=len(runs),
    )


def finish_png(figure: Any, axes: Any, x_label: str, y_label: str, path: Path) -> None:
    """Label, grid and legend `axes`, then write `figure` as a PNG (whole or not at all) and free it."""
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    save_png(figure, path)
    pyplot().close(figure)


def save_png(figure: Any, path: Path) -> None:
    """A matplotlib figure as a PNG that readers see whole or not at all (tl-report's plots)."""
    with atomic_open(path, elsewhere="") as out:  # a failure says the file and the free space
        figure.savefig(out, dpi=120, format="png")


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(tag: str, curves: Sequence[Curve], path: Path) -> None:
    """One figure: `tag` against the step, a line (mean) and a shaded band (min–max) per group."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    for curve in curves:
        (line,) = axes.plot(curve.steps, curve.mean, marker="." if len(curve.steps) < 30 else None, label=curve.label)
        if curve.runs > 1:
            axes.fill_between(curve.steps, curve.low, curve.high, color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_title(f"{tag}: mean, band {BAND}", fontsize="medium")
    finish_png(figure, axes, "step", tag, path)
