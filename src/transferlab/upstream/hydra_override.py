"""Hydra's ``Override._get_value_element_as_str``: Hydra's own spelling of one override value.

Why: the Optuna sweeper writes each sampled value back as an override that Hydra must read back unchanged
(``a\\ b``, ``x\\,y``, quoted strings); this is the function Hydra's grid sweep uses for the same job.
Without it: a sampled string value with a space or comma breaks the trial's overrides.
Checked: hydra-core 1.3.2–1.3.8.
"""

from __future__ import annotations

from typing import Any


def override_value(value: Any) -> str:
    """`value` as Hydra writes it on a command line."""
    from hydra.core.override_parser.types import Override

    return str(Override._get_value_element_as_str(value))
