"""The grpc.aio servicer for ``cbpt.v1.Tuning``: serde -> backend -> serde, errors -> statuses.

The backend (backends.py) scores validated engine requests: by default the engine on one worker
thread (the model is single-tenant) so the event loop stays free for health checks, behind the
scheduler, which takes turns among tenants one forward pass at a time, merges calls that arrive
together (scheduler.py, merging.py) and stops calls whose client went away; or replicas elsewhere
(deploy/). Budgets, score protection and draining stay here, whatever the backend. While
draining, new calls are refused as retryable. Logs carry sizes, timings and the key id, never
texts or choices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import grpc

from cbpt.common.limits import Limits
from cbpt.server.engine.types import ScoreRequest, ScoreResult
from cbpt.server.engine.validation import check_request
from cbpt.server.errors import BudgetExhausted, InvalidRequest, ServerBusy, ServerShuttingDown, UnknownAdapter
from cbpt.server.front import serde
from cbpt.server.front.budgets import EvaluationBudgets
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
_REFUSALS = (
    (BudgetExhausted, "budget"),
    (ServerBusy, "queue_full"),
    (ServerShuttingDown, "draining"),
    (InvalidRequest, "invalid"),
)


class TuningServicer(tuning_pb2_grpc.TuningServicer):
    """Converts, scores on the backend and maps every failure through ``error_status``."""

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
        self._server_info = serde.server_info_message(info)
        self._budgets = budgets
        self._protection = protection or ScoreProtection()
        self._metrics = metrics
        self._text_states = self._backend.text_states  # reported per call (memory)
        self._active = 0  # calls being handled (queued, running or answering)
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

    async def GetServerInfo(
        self, request: tuning_pb2.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> tuning_pb2.ServerInfo:
        if self._draining:
            await context.abort_with_status(error_status(_draining()))
        log.debug("server info", extra={"method": "GetServerInfo"})
        return self._server_info

    async def Evaluate(
        self, request: tuning_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> tuning_pb2.EvaluateResponse:
        started = time.perf_counter()
        self._active += 1
        self._idle.clear()
        try:
            return await self._evaluate(request, context, started)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _evaluate(
        self, request: tuning_pb2.EvaluateRequest, context: grpc.aio.ServicerContext, started: float
    ) -> tuning_pb2.EvaluateResponse:
        key_id = current_key_id.get()
        try:
            if self._draining:
                raise _draining()
            score_request = self._validated(serde.to_score_request(request, self._limits, scope=key_id or ""))
            result = await self._score(score_request, key_id, context)
            response = serde.to_response(self._protection.apply(result, score_request, key_id or ""))
        except Exception as exc:  # every failure leaves through error_status
            status = error_status(exc)
            self._count_refusal(exc)
            self._log_call(request, started, status.code.name, exc)
            await context.abort_with_status(status)
            raise  # not reached: abort_with_status ends the call by raising
        self._log_call(request, started, "OK", tokens=result.tokens_processed)
        return response

    async def CountTokens(
        self, request: tuning_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> tuning_pb2.CountTokensResponse:
        """Tokenising only, on the backend (the tokenizer and its cache are the engine's), in the
        caller's fair turns like its scoring; the key's rate and concurrency limits apply, its
        evaluation budget does not (nothing is scored)."""
        started = time.perf_counter()
        key_id = current_key_id.get()
        fields: dict[str, object] = {
            "key_id": key_id,
            "method": "CountTokens",
            "num_examples": len(request.texts),
            "request_bytes": request.ByteSize(),
        }
        try:
            if self._draining:
                raise _draining()
            texts = serde.to_count_texts(request, self._limits)
            tenant = key_id or f"peer:{context.peer()}"
            counts = await self._backend.count_tokens(texts, tenant, lambda: _cancel_reason(context))
        except Exception as exc:  # every failure leaves through error_status
            status = error_status(exc)
            self._count_refusal(exc)
            if isinstance(exc, InvalidRequest):
                fields["field"] = exc.field
            log.info("count tokens", extra={**fields, "code": status.code.name})
            await context.abort_with_status(status)
            raise  # not reached: abort_with_status ends the call by raising
        seconds = round(time.perf_counter() - started, 4)
        log.info("count tokens", extra={**fields, "seconds": seconds, "code": "OK"})
        return serde.to_count_response(counts)

    def _validated(self, request: ScoreRequest) -> ScoreRequest:
        """Every limit but the token counts, checked before the call is charged or queued (or, on Ray,
        sent to a replica); the engine checks token counts before it caches anything."""
        adapter = self._adapters.get(request.adapter)
        if adapter is None:
            raise UnknownAdapter(request.adapter, list(self._adapters))
        check_request(request, adapter, self._limits)
        return request

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

    def _count_refusal(self, error: Exception) -> None:
        if self._metrics is None:
            return
        for kind, reason in _REFUSALS:
            if isinstance(error, kind):
                self._metrics.refused(reason)
                return

    def _log_call(
        self,
        request: tuning_pb2.EvaluateRequest,
        started: float,
        code: str,
        error: Exception | None = None,
        tokens: int | None = None,
    ) -> None:
        """One line per call: sizes, timings and ids only."""
        fields: dict[str, object] = {
            "key_id": current_key_id.get(),
            "method": "Evaluate",
            "adapter": request.adapter if request.adapter in self._adapters else "<unknown>",
            "mode": serde.mode_name(request.mode),
            "num_candidates": request.num_candidates,
            "num_examples": len(request.texts),
            "num_choices": serde.choice_count(request),
            "request_bytes": request.ByteSize(),
            "seconds": round(time.perf_counter() - started, 4),
            "code": code,
        }
        if tokens is not None:
            fields["tokens"] = tokens
        if self._text_states is not None:
            fields["cache_bytes"] = self._text_states.total_bytes
        if isinstance(error, InvalidRequest):
            fields["field"] = error.field
        elif error is not None:
            fields["error_type"] = type(error).__name__
        if self._metrics is not None:
            self._metrics.call(code, time.perf_counter() - started, request.num_candidates)
        if code == "INTERNAL":
            log.error("evaluate failed", exc_info=error, extra=fields)
        else:
            log.info("evaluate", extra=fields)


def _draining() -> ServerShuttingDown:
    return ServerShuttingDown("server is draining for a restart; retry shortly", retry_after=1.0)


def _cancel_reason(context: grpc.aio.ServicerContext) -> str:
    """Why a call was cancelled: its deadline passed, or its client cancelled or went away."""
    remaining = context.time_remaining()
    return "deadline" if remaining is not None and remaining <= 0 else "cancelled"
