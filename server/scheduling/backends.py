"""Where the servicer's validated engine requests are scored: in this process, or on replicas elsewhere.

The servicer owns the wire (serde, statuses, logs, budgets, draining) and knows only this small
interface, so a backend beyond one process (``deploy/``: Ray Serve) plugs in without touching the
front door: auth, quotas, validation, health and TLS stay ours whatever scores the requests. The
default, ``InProcessBackend``, is the engine on one thread behind the fair scheduler.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from cbpt.server.engine.types import EngineInfo, ScoreRequest, ScoreResult
from cbpt.server.scheduling.merging import MergeSettings
from cbpt.server.scheduling.scheduler import Observer, Scheduler

if TYPE_CHECKING:  # the servicer and settings import this module without loading a model
    from cbpt.server.engine.kv import TextStateCache
    from cbpt.server.engine.scoring import ScoringEngine

Reason = Callable[[], str]
T = TypeVar("T")


class ScoringBackend(ABC):
    """Scores engine requests for the servicer; raises the server's errors (``errors.py``) only."""

    text_states: TextStateCache | None = None  # this process's text-state cache, if it holds one

    @abstractmethod
    def info(self) -> EngineInfo:
        """The served model, adapters and limits (fixed for the backend's life)."""

    @abstractmethod
    async def score(
        self, request: ScoreRequest, tenant: str = "", reason: Reason = lambda: "cancelled"
    ) -> ScoreResult:
        """One request's scores, ``tenant`` getting its fair share; cancelling the awaiting task
        stops the request (``reason()`` says why). ``InvalidRequest``, ``ServerBusy`` on refusal."""

    @abstractmethod
    async def count_tokens(
        self, texts: Sequence[str], tenant: str = "", reason: Reason = lambda: "cancelled"
    ) -> list[int]:
        """Each text's token count under the served tokenizer, tokenised in ``tenant``'s fair turns
        as its scoring is; cancelling the awaiting task stops it. ``ServerBusy`` on refusal."""

    @abstractmethod
    async def close(self) -> None:
        """Stop taking work; calls queued or running fail as retryable (``ServerShuttingDown``)."""


class InProcessBackend(ScoringBackend):
    """The engine on one worker thread (the model is single-tenant) behind the scheduler, so the
    event loop stays free for health checks and tenants take turns one forward pass at a time."""

    def __init__(
        self, engine: ScoringEngine, merge: MergeSettings | None = None, observer: Observer | None = None
    ) -> None:
        self._engine = engine
        self._info = engine.info()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cbpt-engine")
        self.scheduler = Scheduler(engine, self._executor, merge, observer)
        self.text_states = getattr(engine, "text_states", None)

    def info(self) -> EngineInfo:
        return self._info

    async def score(
        self, request: ScoreRequest, tenant: str = "", reason: Reason = lambda: "cancelled"
    ) -> ScoreResult:
        return await self.scheduler.score(request, tenant, reason)

    async def count_tokens(
        self, texts: Sequence[str], tenant: str = "", reason: Reason = lambda: "cancelled"
    ) -> list[int]:
        return await self.scheduler.count(texts, tenant, reason)  # the tokenizer is the engine thread's

    async def on_engine_thread(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` on the engine's thread, between the scheduler's steps (a Ray replica's
        ``@serve.batch`` batches and generator loads)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    async def close(self) -> None:
        await self.scheduler.close()  # returns after the step in progress: the thread is then idle
        self._executor.shutdown(wait=False, cancel_futures=True)


def as_backend(
    engine: ScoringEngine | ScoringBackend,
    merge: MergeSettings | None = None,
    observer: Observer | None = None,
) -> ScoringBackend:
    """A backend as given, or an engine (``info``, ``job``, ``count_job``) run in process."""
    if isinstance(engine, ScoringBackend):
        return engine
    return InProcessBackend(engine, merge, observer)
