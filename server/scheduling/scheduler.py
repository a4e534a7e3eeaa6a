"""Fair scheduling of score requests on the one engine thread, one forward pass at a time.

The model is single-tenant: one thread runs it. Run to completion, one tenant's large call would
hold every other caller behind it, and a call whose client went away would keep the model busy
to its end. So each engine call is a job of steps (one forward pass each, engine/jobs.py) and the
scheduler takes turns among the running jobs, one step each, round robin:

- A job is formed from waiting requests of tenants (API keys) that have no job running, merged
  where they can share chunks (merging.py). So each tenant has at most one job running, and a
  tenant's further calls wait until it ends: a tenant gets one step per round however many calls
  it sends.
- While k jobs run, each gets every k-th step: a call whose job needs s steps finishes within
  k * s steps of being admitted, and a call of a tenant with nothing running is admitted at the
  next step boundary. A step is one chunk or one batch of cached-state encoding, each at most
  ``batch_sequences`` sequences and ``batch_tokens`` padded tokens; a merged job encodes its
  members' texts in shared batches, so it costs what one call of its size would
  (docs/operations.md states the figures).
- A call whose client cancels, disconnects or runs past its deadline is dropped from the queue,
  or its rows are left out of its job from the next chunk on; the job stops once nothing of it
  is wanted. Each is logged with the key id and the reason.
- The queue is bounded: beyond ``max_queued`` waiting calls a call fails at once with
  ``ServerBusy`` (RESOURCE_EXHAUSTED with a retry delay).
- A CountTokens call is a job too (``count``): it is never merged, counts towards the queue bound,
  and tokenises its texts one step at a time in its tenant's turns (engine/jobs.py ``CountJob``).

No transport here: any front end that can name a tenant and a cancellation reason can use it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from cbpt.server.engine.types import ScoreRequest, ScoreResult
from cbpt.server.errors import CallCancelled, ServerBusy, ServerShuttingDown
from cbpt.server.logs import current_key_id
from cbpt.server.scheduling.merging import MergeSettings, take_batch

log = logging.getLogger(__name__)


class Job(Protocol):
    """What the scheduler needs of an engine job (``cbpt.server.engine.jobs.ScoringJob``)."""

    steps_done: int
    last_step_sequences: int

    def step(self) -> bool: ...
    def cancel(self, index: int) -> None: ...
    def cancel_all(self) -> None: ...
    def outcomes(self) -> Sequence[object]: ...


class JobEngine(Protocol):
    def job(self, requests: Sequence[ScoreRequest]) -> Job: ...
    def count_job(self, texts: Sequence[str]) -> Job: ...


@dataclass(frozen=True)
class TokenCount:
    """A CountTokens call's texts: a job of its own (never merged), one turn a step like any job."""

    texts: Sequence[str]


class Observer(Protocol):
    """Where the scheduler reports what it does (metrics.py); every method may be a no-op."""

    def step(self, sequences: int, seconds: float) -> None: ...
    def cancelled(self, reason: str) -> None: ...
    def queue(self, waiting: int, running: int) -> None: ...


class _NoObserver:
    def step(self, sequences: int, seconds: float) -> None:
        pass

    def cancelled(self, reason: str) -> None:
        pass

    def queue(self, waiting: int, running: int) -> None:
        pass


@dataclass(eq=False)
class _Pending:
    work: ScoreRequest | TokenCount
    tenant: str
    future: asyncio.Future[Any]
    job: _Running | None = None
    index: int = 0  # the request's slot in its job

    @property
    def request(self) -> ScoreRequest:
        """The score request (what merging reads); only pending scoring calls are merged."""
        assert isinstance(self.work, ScoreRequest)
        return self.work

    @property
    def sequences(self) -> int:
        return self.work.sequences if isinstance(self.work, ScoreRequest) else 0


@dataclass(eq=False)
class _Running:
    job: Job
    members: list[_Pending]
    tenants: frozenset[str]
    started: float


class Scheduler:
    """Queues score requests and runs them as interleaved jobs on ``executor`` (one engine thread)."""

    def __init__(
        self,
        engine: JobEngine,
        executor: Executor,
        settings: MergeSettings | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._engine = engine
        self._executor = executor
        self.settings = settings or MergeSettings()
        self._observer: Observer = observer or _NoObserver()
        self._waiting: deque[_Pending] = deque()
        self._running: deque[_Running] = deque()
        self._current: _Running | None = None  # the job whose step runs now (not in _running meanwhile)
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._last_job_seconds = 1.0
        self.merged_jobs = 0  # jobs that carried more than one request
        self.steps_run = 0

    # -- the caller's side ------------------------------------------------------------------------
    async def score(
        self, request: ScoreRequest, tenant: str = "", reason: Callable[[], str] = lambda: "cancelled"
    ) -> ScoreResult:
        """The request's scores once its job ends; ``reason()`` names why, should the caller cancel."""
        result: ScoreResult = await self._submit(request, tenant, reason)
        return result

    async def count(
        self, texts: Sequence[str], tenant: str = "", reason: Callable[[], str] = lambda: "cancelled"
    ) -> list[int]:
        """Token counts of ``texts``, tokenised in ``tenant``'s turns as its scoring calls run."""
        counts: list[int] = await self._submit(TokenCount(texts), tenant, reason)
        return counts

    async def _submit(self, work: ScoreRequest | TokenCount, tenant: str, reason: Callable[[], str]) -> Any:
        if self._closing:
            raise ServerShuttingDown()
        if len(self._waiting) >= self.settings.max_queued_requests:
            raise ServerBusy(
                f"server busy: {len(self._waiting)} requests are queued; retry shortly",
                retry_after=self._last_job_seconds,
            )
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name="cbpt-scheduler")
        pending = _Pending(work, tenant, loop.create_future())
        self._waiting.append(pending)
        self._report_queue()
        self._arrived.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._abandon(pending, reason())
            raise

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running) + (self._current is not None)

    def _abandon(self, pending: _Pending, reason: str) -> None:
        """The caller went away: drop its request from the queue, or from its job's next chunks."""
        if pending.job is None:
            if pending in self._waiting:
                self._waiting.remove(pending)
            stage, steps = "queued", 0
        else:
            pending.job.job.cancel(pending.index)
            stage, steps = "running", pending.job.job.steps_done
        self._report_queue()
        self._observer.cancelled(reason)
        scoring = isinstance(pending.work, ScoreRequest)
        log.info(
            "evaluate abandoned" if scoring else "count tokens abandoned",
            extra={
                "key_id": current_key_id.get(),  # captured now: a handler may format the line later
                "method": "Evaluate" if scoring else "CountTokens",
                "reason": reason,
                "stage": stage,
                "steps": steps,
                "code": "CANCELLED",
            },
        )

    # -- shutting down ----------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop: queued calls fail at once, running ones at their next chunk, all as retryable."""
        self._closing = True
        stopped = 0
        while self._waiting:
            stopped += _fail(self._waiting.popleft(), ServerShuttingDown())
        current = [self._current] if self._current is not None else []
        for running in [*current, *self._running]:
            running.job.cancel_all()
            for member in running.members:
                stopped += _fail(member, ServerShuttingDown("server is shutting down: the call was stopped"))
        if stopped:
            for _ in range(stopped):
                self._observer.cancelled("shutdown")
            log.info("calls stopped for shutdown", extra={"reason": "shutdown", "num_calls": stopped})
        self._arrived.set()
        if self._worker is not None:
            await self._worker  # it ends after the step in progress, if any: at most one chunk
            self._worker = None

    # -- the engine's side ------------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._closing:
            try:
                await self._turn()
            except Exception as error:  # a bug here must fail the calls, never leave them hanging
                log.error("scheduler failed; failing the calls it held", exc_info=error)
                jobs = [*self._running, *([self._current] if self._current is not None else [])]
                pending = [*self._waiting, *(member for running in jobs for member in running.members)]
                self._waiting.clear()
                self._running.clear()
                for member in pending:
                    _fail(member, error)

    async def _turn(self) -> None:
        """Admit what can start, then run one step of the next job in turn."""
        loop = asyncio.get_running_loop()
        if not self._running:
            await self._wait_for_work()
            if self._closing:
                return
        self._admit(loop.time())
        if not self._running:
            return
        running = self._current = self._running.popleft()
        started = loop.time()
        try:
            more = await loop.run_in_executor(self._executor, running.job.step)
        except Exception as error:  # an engine failure fails every call the job carried
            for member in running.members:
                _fail(member, error)
            return
        finally:
            self._current = None
            self._report_queue()
        if more:
            self.steps_run += 1
            self._observer.step(running.job.last_step_sequences, loop.time() - started)
            self._running.append(running)
        else:
            self._finish(running, loop.time())

    async def _wait_for_work(self) -> None:
        """Sleep until a request waits; then, for an idle engine, up to the window for company."""
        loop = asyncio.get_running_loop()
        while not self._waiting and not self._closing:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = loop.time() + self.settings.window_seconds
        while (
            not self._closing and sum(p.sequences for p in self._waiting) < self.settings.merge_max_sequences
        ):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                break

    def _admit(self, now: float) -> None:
        """Form jobs from the waiting requests of tenants that have none running."""
        jobs = [*self._running, *([self._current] if self._current is not None else [])]
        busy = {tenant for running in jobs for tenant in running.tenants}
        while True:
            eligible = [pending for pending in self._waiting if pending.tenant not in busy]
            if not eligible:
                return
            leader = eligible[0].work
            if isinstance(leader, TokenCount):
                members = eligible[:1]
            else:
                scoring = [pending for pending in eligible if isinstance(pending.work, ScoreRequest)]
                members = take_batch(scoring, self.settings.merge_max_sequences)
            for pending in members:
                self._waiting.remove(pending)
            try:
                if isinstance(leader, TokenCount):
                    job = self._engine.count_job(leader.texts)
                else:
                    job = self._engine.job([pending.request for pending in members])
            except Exception as error:  # a broken engine fails the calls, never the scheduler
                for pending in members:
                    _fail(pending, error)
                continue
            running = _Running(job, members, frozenset(p.tenant for p in members), now)
            for index, pending in enumerate(members):
                pending.job, pending.index = running, index
            self._running.append(running)
            self.merged_jobs += len(members) > 1
            busy |= running.tenants

    def _finish(self, running: _Running, now: float) -> None:
        self._last_job_seconds = max(0.05, now - running.started)
        for member, outcome in zip(running.members, running.job.outcomes(), strict=True):
            if member.future.done() or isinstance(outcome, CallCancelled):
                continue
            if isinstance(outcome, Exception):
                member.future.set_exception(outcome)
            else:
                member.future.set_result(outcome)

    def _report_queue(self) -> None:
        self._observer.queue(len(self._waiting), self.running)


def _fail(pending: _Pending, error: BaseException) -> int:
    if pending.future.done():
        return 0
    pending.future.set_exception(error)
    return 1
