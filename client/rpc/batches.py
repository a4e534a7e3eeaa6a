"""Scoring a whole file with one vector in batches of rows, so a long file can report progress.

One ``predict`` call for 872 rows is split by the SDK to the server's limits but says nothing
for minutes; batches of ``BATCH_ROWS`` rows (about one server chunk of sequences) cost nothing
in throughput and let ``on_rows`` report after each.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cbpt.client.rpc.sdk import TuningClient
from cbpt.common.tasks.scoring import ScoringMode
from cbpt.common.tasks.task_format import Examples

BATCH_ROWS = 64


def predict_in_batches(
    client: TuningClient,
    adapter: str,
    vector: np.ndarray,
    examples: Examples,
    mode: ScoringMode,
    *,
    on_rows: Callable[[int], None] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> np.ndarray:
    """Log-probs [examples, widest choice list] of one vector, exactly as one ``predict`` call."""
    parts: list[np.ndarray] = []
    for start in range(0, len(examples), batch_rows):
        batch = examples.take(range(start, min(start + batch_rows, len(examples))))
        parts.append(client.predict(adapter, vector, batch.texts, batch.choices, mode, batch.cue))
        if on_rows is not None:
            on_rows(len(batch))
    width = max((part.shape[1] for part in parts), default=0)
    padded = [np.pad(part, ((0, 0), (0, width - part.shape[1])), constant_values=-np.inf) for part in parts]
    return np.concatenate(padded) if padded else np.zeros((0, 0), dtype=np.float32)
