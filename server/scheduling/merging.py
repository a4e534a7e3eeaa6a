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
from typing import Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from cbpt.server.engine.types import ScoreRequest, ScoringMode


class MergeSettings(BaseModel):
    """The ``scheduler`` section of the server's settings: when calls share a job, and how many may wait."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    merge_window_ms: float = Field(
        5.0, ge=0, le=1000, description="how long an idle engine waits to merge concurrent calls (0: no wait)"
    )
    merge_max_sequences: int = Field(
        512, ge=1, description="sequences merged into one job (a merged call waits for all of them)"
    )
    max_queued_requests: int = Field(
        64, ge=1, description="calls waiting for the engine before new ones are refused with a retry delay"
    )

    @property
    def window_seconds(self) -> float:
        return self.merge_window_ms / 1000


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
