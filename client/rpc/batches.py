"""Scoring a whole file with one vector: requests sized by text, several in flight, progress as each returns.

The server sorts each request's rows by length and cuts them into passes of a few thousand tokens
(``Batching``), so a request should hold enough text to fill those passes: requests of a fixed 64
rows left most passes padded and the server idle between one answer and the next call. Here a
request carries about ``request_chars`` characters of text (a few thousand tokens), and
``in_flight`` requests are on their way at once, so the next waits at the server while one runs
(the server merges a key's waiting calls into its next job). Rows go out in the order given (the
caller's shuffle); results come back in that order whatever order the answers arrive in.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.rpc.splitting import consecutive_parts
from cbpt.common.tasks.scoring import ScoringMode
from cbpt.common.tasks.task_format import Examples


@dataclass(frozen=True)
class RequestBatching:
    """How a file is cut into requests."""

    request_chars: int = 64 * 1024  # text per request: about 16k tokens at 4 characters a token
    max_rows: int = 512  # rows per request at most (the SDK also splits to the server's limits)
    in_flight: int = 2  # requests sent and not yet answered, at most

    def __post_init__(self) -> None:
        for name in ("request_chars", "max_rows", "in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def before_issue_24(cls) -> RequestBatching:
        """Requests of 64 rows, one at a time: as evaluate and predict sent them before issue #24."""
        return cls(request_chars=1 << 62, max_rows=64, in_flight=1)


DEFAULT_BATCHING = RequestBatching()  # what evaluate and predict use (the benchmark swaps in the old one)


def request_spans(lengths: list[int], batching: RequestBatching) -> list[range]:
    """Consecutive rows per request: at most ``max_rows`` rows and ``request_chars`` characters (a
    longer row goes alone)."""
    parts = consecutive_parts(lengths, batching.max_rows, batching.request_chars)
    return [range(part.start, part.stop) for part in parts]


def predict_in_batches(
    client: TuningClient,
    adapter: str,
    vector: np.ndarray,
    examples: Examples,
    mode: ScoringMode,
    *,
    on_rows: Callable[[int], None] | None = None,
    batching: RequestBatching | None = None,
) -> np.ndarray:
    """Log-probs [examples, widest choice list] of one vector, as one ``predict`` call would give them
    (``on_rows`` hears of each request's rows as its answer arrives)."""
    batching = batching or DEFAULT_BATCHING
    spans = request_spans([len(text) for text in examples.texts], batching)
    parts: dict[int, np.ndarray] = {}

    def score(span: range) -> np.ndarray:
        batch = examples.take(span)
        return client.predict(adapter, vector, batch.texts, batch.choices, mode, batch.cue)

    with ThreadPoolExecutor(batching.in_flight, thread_name_prefix="cbpt-predict") as pool:
        pending: dict[Future[np.ndarray], int] = {}
        upcoming = iter(range(len(spans)))
        try:
            while True:
                for number in upcoming:  # keep ``in_flight`` requests on their way
                    pending[pool.submit(score, spans[number])] = number
                    if len(pending) >= batching.in_flight:
                        break
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    number = pending.pop(future)
                    parts[number] = future.result()  # the first failure ends the whole call
                    if on_rows is not None:
                        on_rows(len(spans[number]))
        finally:
            for future in pending:
                future.cancel()
    ordered = [parts[number] for number in range(len(spans))]
    width = max((part.shape[1] for part in ordered), default=0)
    padded = [np.pad(part, ((0, 0), (0, width - part.shape[1])), constant_values=-np.inf) for part in ordered]
    return np.concatenate(padded) if padded else np.zeros((0, 0), dtype=np.float32)
