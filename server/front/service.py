"""The grpc.aio servicer for ``cbpt.v1.Tuning``: each handler reads serde -> backend -> serde.

The backend (backends.py) scores validated engine requests: by default the engine on one worker
thread (the model is single-tenant) so the event loop stays free for health checks, behind the
scheduler, which takes turns among tenants one forward pass at a time, merges calls that arrive
together (scheduler.py, merging.py) and stops calls whose client went away; or replicas elsewhere
(deploy/). Budgets, score protection and draining stay here, whatever the backend. While
draining, new calls are refused as retryable. What every call does around that (time it, count
it, log it, answer a failure with its status from the error table) is ``calls.answered``; logs
carry sizes, timings and the key id, never texts or choices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from cbpt.common.limits import Limits
from cbpt.server.engine.types import ScoreRequest, ScoreResult
from cbpt.server.errors import ServerShuttingDown
from cbpt.server.front import serde
from cbpt.server.front.budgets import EvaluationBudgets
from cbpt.server.front.calls import answered
from cbpt.server.front.metrics import Metrics
from cbpt.server.front.protection import ScoreProtection
from cbpt.server.front.status import error_status
from cbpt.server.logs import current_key_id
from cbpt.server.scheduling.backends import ScoringBackend, as_backend
from cbpt.server.scheduling.merging import MergeSettings
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc

if TYPE_CHECKING:
    from cbpt.server.engine.scoring import ScoringEngine

log = logging.getLogger(__name__)

SERVICE_NAME = tuning_pb2.DESCRIPTOR.services_by_name["Tuning"].full_name


class TuningServicer(tuning_pb2_grpc.TuningServicer):
    """Converts, scores on the backend; ``answered`` maps every failure to its status."""

    def __init__(
        self,
        engine: ScoringEngine | ScoringBackend,
        merge: MergeSettings | None = None,
        *,
        budgets: EvaluationBudgets | None = None,
        protection: ScoreProtection | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._backend = as_backend(engine, merge, metrics)  # an engine runs in process, scheduled
        info = self._backend.info()
        self._limits = info.limits
        self._adapters = {a.name: a for a in info.adapters}  # what requests are validated against
        self._server_info = serde.server_info_to_proto(info)
        self._budgets = budgets
        self._protection = protection or ScoreProtection()
        self._metrics = metrics
        self._text_states = self._backend.text_states  # reported per call (memory)
        self._active = 0  # calls being handled (queued, running or answering: ``call_in_flight``)
        self._idle = asyncio.Event()
        self._idle.set()
        self._draining = False

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def backend(self) -> ScoringBackend:
        return self._backend

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def in_flight(self) -> int:
        return self._active

    async def drain(self, grace: float, hurry: asyncio.Event | None = None) -> bool:
        """Refuse new calls (UNAVAILABLE, retryable) and wait up to ``grace`` seconds, or until ``hurry``
        is set, for the calls in flight; True when they all finished."""
        self._draining = True
        waits = [asyncio.ensure_future(self._idle.wait())]
        if hurry is not None:
            waits.append(asyncio.ensure_future(hurry.wait()))
        try:
            await asyncio.wait(waits, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return self._idle.is_set()

    async def close(self) -> None:
        """Stop the calls still running at their next chunk (answered UNAVAILABLE), then the engine thread."""
        self._draining = True
        await self._backend.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 5.0)  # let the stopped calls send their status

    @property
    def metrics(self) -> Metrics | None:
        return self._metrics

    @contextlib.contextmanager
    def call_in_flight(self) -> Iterator[None]:
        """Counts a call as in flight until its answer or status is sent (``drain`` waits on it)."""
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def GetServerInfo(
        self, request: tuning_pb2.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> tuning_pb2.ServerInfo:
        if self._draining:
            await context.abort_with_status(error_status(_draining()))
        log.debug("server info", extra={"method": "GetServerInfo"})
        return self._server_info

    def _evaluate_log_fields(
        self, request: tuning_pb2.EvaluateRequest, response: tuning_pb2.EvaluateResponse | None
    ) -> dict[str, object]:
        fields = serde.evaluate_log_fields(request, response, self._adapters)
        if self._text_states is not None:
            fields["cache_bytes"] = self._text_states.total_bytes
        return fields

    def _count_tokens_log_fields(
        self, request: tuning_pb2.CountTokensRequest, response: tuning_pb2.CountTokensResponse | None
    ) -> dict[str, object]:
        return serde.count_tokens_log_fields(request, response)

    @answered(_evaluate_log_fields, candidates=serde.candidate_count)
    async def Evaluate(
        self, request: tuning_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> tuning_pb2.EvaluateResponse:
        self._refuse_while_draining()
        key_id = current_key_id.get()
        score_request = serde.score_request_from_proto(
            request, self._limits, self._adapters, scope=key_id or ""
        )
        result = await self._score(score_request, key_id, context)
        return serde.score_result_to_proto(self._protection.apply(result, score_request, key_id or ""))

    @answered(_count_tokens_log_fields)
    async def CountTokens(
        self, request: tuning_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> tuning_pb2.CountTokensResponse:
        """Tokenising only, on the backend (the tokenizer and its cache are the engine's), in the
        caller's fair turns like its scoring; the key's rate and concurrency limits apply, its
        evaluation budget does not (nothing is scored)."""
        self._refuse_while_draining()
        texts = serde.texts_from_proto(request, self._limits)
        tenant = current_key_id.get() or f"peer:{context.peer()}"
        counts = await self._backend.count_tokens(texts, tenant, lambda: _cancel_reason(context))
        return serde.token_counts_to_proto(counts)

    def _refuse_while_draining(self) -> None:
        if self._draining:
            raise _draining()

    async def _score(
        self, request: ScoreRequest, key_id: str | None, context: grpc.aio.ServicerContext
    ) -> ScoreResult:
        """Charge the tenant's budget what the engine computes (``sequences``: candidates x examples,
        x choices in full-choice mode), take a turn on the engine, and refund a call not answered."""
        cost = request.sequences
        if self._budgets is not None:
            self._budgets.charge(key_id, cost)
        tenant = key_id or f"peer:{context.peer()}"  # fair shares go to tenants; without any, connections
        try:
            return await self._backend.score(request, tenant, lambda: _cancel_reason(context))
        except BaseException:
            if self._budgets is not None:
                self._budgets.refund(key_id, cost)
            raise


def _draining() -> ServerShuttingDown:
    return ServerShuttingDown("server is draining for a restart; retry shortly", retry_after=1.0)


def _cancel_reason(context: grpc.aio.ServicerContext) -> str:
    """Why a call was cancelled: its deadline passed, or its client cancelled or went away."""
    remaining = context.time_remaining()
    return "deadline" if remaining is not None and remaining <= 0 else "cancelled"
