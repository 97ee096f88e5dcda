"""torch's ``SummaryWriter._get_file_writer``: the event-file writer behind a TensorBoard ``SummaryWriter``.

Why: the HPARAMS tab needs the raw ``hparams`` summaries (experiment, session start, session end) written into
the run's own event file; ``SummaryWriter.add_hparams`` writes them into a new sub-run instead. Lightning's own
``TensorBoardLogger.log_hyperparams`` does the same.
Without it: the HPARAMS tab shows a second, metric-less run per job.
Checked: torch 2.x (2.9).
"""

from __future__ import annotations

from typing import Any


def add_summaries(writer: Any, *summaries: Any) -> None:
    """Write `summaries` (protobuf ``Summary`` objects) into `writer`'s event file."""
    file_writer = writer._get_file_writer()
    for summary in summaries:
        file_writer.add_summary(summary)
