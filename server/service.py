"""The grpc.aio servicer for ``cbpt.v1.Tuning``: serde -> merger -> engine -> serde, errors -> statuses.

The engine runs on one worker thread (the model is single-tenant) so the event loop stays free
for health checks; calls that arrive together are merged into shared forward passes
(merging.py). Logs carry sizes, timings and the key id, never texts or choices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from cbpt.server import serde
from cbpt.server.engine.limits import Limits
from cbpt.server.engine.scoring import ScoringEngine
from cbpt.server.errors import InvalidRequest
from cbpt.server.logs import current_key_id
from cbpt.server.merging import MergeSettings, RequestMerger
from cbpt.server.status import error_status
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = tuning_pb2.DESCRIPTOR.services_by_name["Tuning"].full_name


class TuningServicer(tuning_pb2_grpc.TuningServicer):
    """Converts, scores on the engine thread and maps every failure through ``error_status``."""

    def __init__(self, engine: ScoringEngine, merge: MergeSettings | None = None) -> None:
        info = engine.info()
        self._limits = info.limits
        self._adapters = frozenset(a.name for a in info.adapters)
        self._server_info = serde.server_info_message(info)
        self._engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cbpt-engine")
        self._merger = RequestMerger(engine, self._executor, merge)

    @property
    def limits(self) -> Limits:
        return self._limits

    async def close(self) -> None:
        await self._merger.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def GetServerInfo(
        self, request: tuning_pb2.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> tuning_pb2.ServerInfo:
        log.debug("server info", extra={"method": "GetServerInfo"})
        return self._server_info

    async def Evaluate(
        self, request: tuning_pb2.EvaluateRequest, context: grpc.aio.ServicerContext
    ) -> tuning_pb2.EvaluateResponse:
        started = time.perf_counter()
        try:
            score_request = serde.to_score_request(request, self._limits, scope=current_key_id.get() or "")
            result = await self._merger.score(score_request)
            response = serde.to_response(result)
        except Exception as exc:  # every failure leaves through error_status
            status = error_status(exc)
            self._log_call(request, started, status.code.name, exc)
            await context.abort_with_status(status)
            raise  # not reached: abort_with_status ends the call by raising
        self._log_call(request, started, "OK", tokens=result.tokens_processed)
        return response

    async def CountTokens(
        self, request: tuning_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> tuning_pb2.CountTokensResponse:
        """Tokenising only, on the engine thread (the tokenizer and its cache are the engine's)."""
        started = time.perf_counter()
        fields: dict[str, object] = {
            "key_id": current_key_id.get(),
            "method": "CountTokens",
            "num_examples": len(request.texts),
            "request_bytes": request.ByteSize(),
        }
        try:
            texts = serde.to_count_texts(request, self._limits)
            loop = asyncio.get_running_loop()
            counts = await loop.run_in_executor(self._executor, self._engine.count_tokens, texts)
        except Exception as exc:  # every failure leaves through error_status
            status = error_status(exc)
            if isinstance(exc, InvalidRequest):
                fields["field"] = exc.field
            log.info("count tokens", extra={**fields, "code": status.code.name})
            await context.abort_with_status(status)
            raise  # not reached: abort_with_status ends the call by raising
        seconds = round(time.perf_counter() - started, 4)
        log.info("count tokens", extra={**fields, "seconds": seconds, "code": "OK"})
        return serde.to_count_response(counts)

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
        if isinstance(error, InvalidRequest):
            fields["field"] = error.field
        elif error is not None:
            fields["error_type"] = type(error).__name__
        if code == "INTERNAL":
            log.error("evaluate failed", exc_info=error, extra=fields)
        else:
            log.info("evaluate", extra=fields)
