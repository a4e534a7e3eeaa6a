"""Where the servicer's validated engine requests are scored: in this process, or on replicas elsewhere.

The servicer owns the wire (serde, statuses, logs) and knows only this small interface, so a
backend beyond one process (``deploy/``: Ray Serve) plugs in without touching the front door:
auth, quotas, validation, health and TLS stay ours whatever scores the requests. The default,
``InProcessBackend``, is exactly today's path: one engine thread behind the request merger.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from cbpt.server.engine.types import EngineInfo, ScoreRequest, ScoreResult
from cbpt.server.merging import MergeSettings, RequestMerger

if TYPE_CHECKING:  # the servicer and settings import this module without loading a model
    from cbpt.server.engine.scoring import ScoringEngine


class ScoringBackend(ABC):
    """Scores engine requests for the servicer; raises the server's errors (``errors.py``) only."""

    @abstractmethod
    def info(self) -> EngineInfo:
        """The served model, adapters and limits (fixed for the backend's life)."""

    @abstractmethod
    async def score(self, request: ScoreRequest) -> ScoreResult:
        """One request's scores; ``InvalidRequest``, ``ServerBusy`` and the like on refusal."""

    @abstractmethod
    async def close(self) -> None:
        """Stop taking work; calls still queued fail with a retry delay."""


class InProcessBackend(ScoringBackend):
    """The engine on one worker thread (the model is single-tenant) behind the request merger,
    so the event loop stays free for health checks and concurrent calls share forward passes."""

    def __init__(self, engine: ScoringEngine, merge: MergeSettings | None = None) -> None:
        self._info = engine.info()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cbpt-engine")
        self.merger = RequestMerger(engine, self._executor, merge)

    def info(self) -> EngineInfo:
        return self._info

    async def score(self, request: ScoreRequest) -> ScoreResult:
        return await self.merger.score(request)

    async def close(self) -> None:
        await self.merger.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def as_backend(engine: ScoringEngine | ScoringBackend, merge: MergeSettings | None = None) -> ScoringBackend:
    """A backend as given, or an engine (anything with ``info`` and ``score_many``) run in process."""
    if isinstance(engine, ScoringBackend):
        return engine
    return InProcessBackend(engine, merge)
