"""The grpc.aio servicer for ``cbpt.v1.Tuning``: serde -> backend -> serde, errors -> statuses.

The backend (backends.py) scores validated engine requests: by default the engine on one worker
thread behind the merger (merging.py), so the event loop stays free for health checks and calls
that arrive together share forward passes; or replicas elsewhere (deploy/). Logs carry sizes,
timings and the key id, never texts or choices.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import grpc

from cbpt.server import serde
from cbpt.server.backends import ScoringBackend, as_backend
from cbpt.server.engine.limits import Limits
from cbpt.server.errors import InvalidRequest
from cbpt.server.logs import current_key_id
from cbpt.server.merging import MergeSettings
from cbpt.server.status import error_status
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc

if TYPE_CHECKING:
    from cbpt.server.engine.scoring import ScoringEngine

log = logging.getLogger(__name__)

SERVICE_NAME = tuning_pb2.DESCRIPTOR.services_by_name["Tuning"].full_name


class TuningServicer(tuning_pb2_grpc.TuningServicer):
    """Converts, scores on the engine thread and maps every failure through ``error_status``."""

    def __init__(self, engine: ScoringEngine | ScoringBackend, merge: MergeSettings | None = None) -> None:
        self._backend = as_backend(engine, merge)  # an engine runs in process, behind the merger
        info = self._backend.info()
        self._limits = info.limits
        self._adapters = frozenset(a.name for a in info.adapters)
        self._server_info = serde.server_info_message(info)

    @property
    def limits(self) -> Limits:
        return self._limits

    async def close(self) -> None:
        await self._backend.close()

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
            result = await self._backend.score(score_request)
            response = serde.to_response(result)
        except Exception as exc:  # every failure leaves through error_status
            status = error_status(exc)
            self._log_call(request, started, status.code.name, exc)
            await context.abort_with_status(status)
            raise  # not reached: abort_with_status ends the call by raising
        self._log_call(request, started, "OK", tokens=result.tokens_processed)
        return response

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
