"""The search space: ``hydra.sweeper.params`` and the command line's sweep overrides as Optuna distributions.

Imported only when a sweep starts (it imports Optuna). The syntax is Hydra's override grammar, as
hydra-optuna-sweeper read it:

* ``choice(a, b, c)`` and ``shuffle(range(…))``: categorical;
* ``range(start, stop, step)``: the values Hydra's grid sweep gives (``stop`` excluded), as a stepped int or
  float distribution, so the same override means the same values under either sweeper;
* ``interval(a, b)``: uniform between a and b, integers when both bounds are written as integers (or tagged
  ``int``), floats otherwise; ``tag(log, interval(a, b))``: log-uniform;
* anything else (``key=value``): a fixed value every trial gets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from transferlab.upstream.hydra_override import override_value
from transferlab.utils.errors import UserError

_INTERVAL_ARGS = re.compile(r"interval\(\s*(?:start\s*=\s*)?([^,()]+?)\s*,\s*(?:end\s*=\s*)?([^,()]+?)\s*\)")
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class SearchSpace:
    """What each trial samples, what every trial gets fixed, and how a value is written back as an override."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)  # key → the value exactly as written
    grid: dict[str, list[Any]] = field(default_factory=dict)  # key → its values, for keys that have a finite list

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """A trial's overrides: its sampled values (in search-space order), then the fixed ones."""
        # Hydra's own spelling of a value (what its grid sweep writes: `a\ b`, `x\,y`), which it reads back as is
        sampled = [f"{key}={override_value(params[key])}" for key in self.distributions]
        return sampled + [f"{key}={value}" for key, value in self.fixed.items()]

    def example(self) -> dict[str, Any]:
        """One value per sampled key (a choice's first, an interval's or range's low end): a config to check."""
        return {
            key: dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low  # type: ignore[attr-defined]
            for key, dist in self.distributions.items()
        }

    def grid_values(self) -> dict[str, list[Any]]:
        """The grid for Optuna's GridSampler: every key needs a finite list of values."""
        continuous = [key for key in self.distributions if key not in self.grid]
        if continuous:
            raise UserError(
                f"the grid sampler needs a finite list of values, but {', '.join(continuous)} is an interval. "
                "Use choice(…) or range(…) for it, or another sampler"
            )
        return {key: self.grid[key] for key in self.distributions}


def parse_search_space(overrides: list[str]) -> SearchSpace:
    """The search space of `overrides` (``hydra.sweeper.params`` first, then the command line's, which win)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot read the Optuna search space: {first}. Check hydra.sweeper.params and the overrides"
        ) from None
    space = SearchSpace()
    for override in parsed:
        key = override.get_key_element()
        space.distributions.pop(key, None)  # a later override of a key replaces an earlier one
        space.fixed.pop(key, None)
        space.grid.pop(key, None)
        if not override.is_sweep_override():
            space.fixed[key] = override.get_value_element_as_str()
            continue
        _add_sweep(space, key, override)
    return space


def _add_sweep(space: SearchSpace, key: str, override: Override) -> None:
    value = override.value()
    tags = set(getattr(value, "tags", set()) or set())
    text = override.input_line or f"{key}=…"
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        if "log" in tags:
            raise UserError(f"{text}: tag(log, …) needs an interval or a range, not a list of choices. Drop the tag")
        values = list(override.sweep_iterator())
        if not values:
            raise UserError(f"{text} has no values. Give at least one")
        if isinstance(value, RangeSweep):  # shuffled anew on every launch; a study's choices must stay the same
            values = sorted(values)
        bad = [v for v in values if not isinstance(v, (str, int, float, bool))]
        if bad:
            raise UserError(f"{text}: Optuna's choices are strings, numbers or booleans, not {bad[0]!r}. Quote it")
        space.distributions[key] = CategoricalDistribution(values)
        space.grid[key] = values
    elif isinstance(value, RangeSweep):
        # Hydra adds float steps up (0.30000000000000004): rounded, so the step divides the range exactly
        values = [round(v, 12) if isinstance(v, float) else v for v in override.sweep_iterator()]
        if not values:
            raise UserError(f"{text} has no values (range's stop is excluded). Widen it")
        step = value.step if value.step is not None else 1
        low, high = min(values), max(values)
        if all(isinstance(v, int) for v in values):
            if "log" in tags and abs(step) != 1:
                raise UserError(f"{text}: a log-scaled integer range must have step 1. Drop the step or the tag")
            log = "log" in tags
            space.distributions[key] = IntDistribution(low, high, log=log, step=1 if log else abs(step))
        else:
            if "log" in tags:
                raise UserError(f"{text}: a float range cannot be log-scaled. Use tag(log, interval(a, b))")
            space.distributions[key] = FloatDistribution(low, high, step=abs(float(step)) if len(values) > 1 else None)
        space.grid[key] = values
    elif isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if low is None or high is None or not low < high:
            raise UserError(f"{text}: an interval needs a lower bound below its upper bound")
        log = "log" in tags
        if log and low <= 0:
            raise UserError(f"{text}: a log-scaled interval needs a positive lower bound")
        if "int" in tags or _written_as_integers(text):
            space.distributions[key] = IntDistribution(int(low), int(high), log=log)
        else:
            space.distributions[key] = FloatDistribution(float(low), float(high), log=log)
    else:
        raise UserError(f"{text}: the Optuna sweeper reads choice(…), range(…) and interval(…) sweeps only")


def _written_as_integers(text: str) -> bool:
    """Whether both bounds of the interval in `text` are integer literals (Hydra hands them over as floats)."""
    match = _INTERVAL_ARGS.search(text)
    return bool(match) and all(_INTEGER.fullmatch(bound) for bound in match.groups())
