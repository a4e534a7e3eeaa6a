"""Dynamic batching: Evaluate calls that arrive close together share the engine's forward passes.

Several clients tuning at once each send small requests (one generation, a few dozen sequences);
alone, each fills the length-sorted chunks poorly. The merger queues requests, and whenever the
engine is free it takes everything waiting (after at most ``window`` seconds for company) up to a
sequence budget, and scores it with one ``ScoringEngine.score_many`` call on the engine thread.
The queue is bounded: when it is full a call fails at once with RESOURCE_EXHAUSTED and a retry
delay, rather than piling up memory and latency. No transport code here: any front end can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cbpt.server.engine.types import ScoreRequest, ScoreResult
from cbpt.server.errors import ServerBusy

if TYPE_CHECKING:  # settings import this module, and must not pull torch in
    from cbpt.server.engine.scoring import ScoringEngine


@dataclass(frozen=True)
class MergeSettings:
    window_seconds: float = 0.005  # how long an idle engine waits for more requests to merge
    max_sequences: int = 4096  # sequences merged into one engine call (a single request may exceed it)
    max_queued: int = 64  # requests waiting; beyond this, calls are refused with a retry delay


@dataclass
class _Pending:
    request: ScoreRequest
    future: asyncio.Future[ScoreResult]

    @property
    def sequences(self) -> int:
        return self.request.sequences


class RequestMerger:
    """Queues score requests and runs them merged on ``executor`` (one engine thread)."""

    def __init__(self, engine: ScoringEngine, executor: Executor, settings: MergeSettings | None = None):
        self._engine = engine
        self._executor = executor
        self.settings = settings or MergeSettings()
        self._waiting: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._last_call_seconds = 1.0
        self.merged_calls = 0  # engine calls that carried more than one request

    async def score(self, request: ScoreRequest) -> ScoreResult:
        if len(self._waiting) >= self.settings.max_queued:
            raise ServerBusy(
                f"server busy: {len(self._waiting)} requests are queued; retry shortly",
                retry_after=self._last_call_seconds,
            )
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="cbpt-merger")
        pending = _Pending(request, asyncio.get_running_loop().create_future())
        self._waiting.append(pending)
        self._arrived.set()
        return await pending.future

    async def close(self) -> None:
        """Stop the worker; calls still queued fail with a retry delay."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while self._waiting:
            pending = self._waiting.popleft()
            if not pending.future.done():
                pending.future.set_exception(ServerBusy("server is shutting down", retry_after=1.0))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [pending for pending in await self._collect() if not pending.future.done()]
            if not batch:  # every caller gave up while queued
                continue
            started = loop.time()
            try:
                outcomes = await loop.run_in_executor(
                    self._executor, self._engine.score_many, [pending.request for pending in batch]
                )
            except Exception as error:  # an engine failure fails every call it carried
                outcomes = [error] * len(batch)
            self._last_call_seconds = max(0.05, loop.time() - started)
            self.merged_calls += len(batch) > 1
            for pending, outcome in zip(batch, outcomes, strict=True):
                if pending.future.done():
                    continue
                if isinstance(outcome, Exception):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(outcome)

    async def _collect(self) -> list[_Pending]:
        """The first waiting request, then whatever else arrives within the window, up to the budget."""
        loop = asyncio.get_running_loop()
        await self._wait_for_arrival(None)
        batch = [self._waiting.popleft()]
        budget = self.settings.max_sequences - batch[0].sequences
        deadline = loop.time() + self.settings.window_seconds
        while budget > 0:
            if not self._waiting and not await self._wait_for_arrival(deadline - loop.time()):
                break
            if self._waiting[0].sequences > budget:  # too big to join: it leads the next call
                break
            budget -= self._waiting[0].sequences
            batch.append(self._waiting.popleft())
        return batch

    async def _wait_for_arrival(self, timeout: float | None) -> bool:
        """Wait until a request is queued; False when ``timeout`` passes first."""
        while not self._waiting:
            if timeout is not None and timeout <= 0:
                return False
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                return bool(self._waiting)
        return True
