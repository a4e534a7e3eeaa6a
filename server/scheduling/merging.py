"""Dynamic batching: which waiting score requests share one engine job.

Several clients tuning at once each send small requests (one generation, a few dozen sequences);
alone, each fills the length-sorted chunks poorly. Requests that wait together and share an
adapter, scoring mode and cue are laid end to end in one job, so they fill the same chunks; their
scores equal those of scoring each alone (within float rounding of a different padding). A job's
results all come at its end, so a merged job is kept small (``max_sequences``): a small call never
waits for a large one merged beside it. The scheduler (scheduler.py) decides when to form jobs and
interleaves them; nothing here knows about transport or threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from cbpt.server.engine.types import ScoreRequest, ScoringMode


@dataclass(frozen=True)
class MergeSettings:
    window_seconds: float = 0.005  # how long an idle engine waits for more requests to merge
    max_sequences: int = 512  # sequences merged into one job (a single request may exceed it)
    max_queued: int = 64  # requests waiting; beyond this, calls are refused with a retry delay


class Waiting(Protocol):
    @property
    def request(self) -> ScoreRequest: ...


W = TypeVar("W", bound=Waiting)


def merge_key(request: ScoreRequest) -> tuple[str, ScoringMode, str]:
    """Requests with equal keys can share chunks: the engine groups by adapter, mode and cue."""
    return request.adapter, request.mode, request.cue


def take_batch(waiting: Sequence[W], max_sequences: int) -> list[W]:
    """The first waiting request, then later ones with its merge key while the total fits.

    The first always goes (even beyond the budget: it then runs alone); a later one that does not
    fit is left for a later job, and smaller ones behind it may still join.
    """
    if not waiting:
        return []
    leader = waiting[0]
    key = merge_key(leader.request)
    batch = [leader]
    total = leader.request.sequences
    for candidate in waiting[1:]:
        size = candidate.request.sequences
        if merge_key(candidate.request) == key and total + size <= max_sequences:
            batch.append(candidate)
            total += size
    return batch
