"""The grpc.aio servicer for ``cbpt.v1.Tuning``: wire -> engine -> wire, and errors -> statuses in one place.

The engine runs on one worker thread (the model is single-tenant) so the
event loop stays free for health checks; calls that arrive together are
merged into shared forward passes (merging.py). Logs carry sizes, timings and the
key id, never texts or choices.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cbpt.common.wire import WireFormatError, pack_floats, unpack_floats
from cbpt.server import __version__
from cbpt.server.engine import EngineInfo, ScoreRequest, ScoreResult, ScoringEngine, ScoringMode
from cbpt.server.errors import AuthenticationFailed, InvalidRequest, QuotaExceeded
from cbpt.server.limits import Limits
from cbpt.server.logs import current_key_id
from cbpt.server.merging import MergeSettings, RequestMerger
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = tuning_pb2.DESCRIPTOR.services_by_name["Tuning"].full_name
INTERNAL_MESSAGE = "internal server error; the server log has the details"

_MODES = {
    tuning_pb2.SCORING_MODE_UNSPECIFIED: ScoringMode.FIRST_TOKEN,
    tuning_pb2.SCORING_MODE_FIRST_TOKEN: ScoringMode.FIRST_TOKEN,
    tuning_pb2.SCORING_MODE_FULL_CHOICE: ScoringMode.FULL_CHOICE,
}


def error_status(error: BaseException) -> grpc.Status:
    """The one mapping from server errors to gRPC statuses with rich details."""
    status = status_pb2.Status()
    if isinstance(error, InvalidRequest):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.description
        )
        detail = error_details_pb2.BadRequest(field_violations=[violation])
        _set(status, code_pb2.INVALID_ARGUMENT, str(error), detail)
    elif isinstance(error, QuotaExceeded):
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, math.ceil(error.retry_after * 1000)))
        _set(status, code_pb2.RESOURCE_EXHAUSTED, str(error), error_details_pb2.RetryInfo(retry_delay=delay))
    elif isinstance(error, AuthenticationFailed):
        _set(status, code_pb2.UNAUTHENTICATED, str(error))
    else:
        _set(status, code_pb2.INTERNAL, INTERNAL_MESSAGE)
    return rpc_status.to_status(status)


def _set(status: status_pb2.Status, code: int, message: str, detail: object | None = None) -> None:
    status.code = code
    status.message = message
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)


def server_info_message(info: EngineInfo) -> tuning_pb2.ServerInfo:
    limits = info.limits
    return tuning_pb2.ServerInfo(
        model_id=info.model_id,
        model_fingerprint=info.fingerprint,
        hidden_size=info.hidden_size,
        adapters=[
            tuning_pb2.AdapterInfo(
                name=a.name,
                method=a.method,
                dimension=a.dimension,
                prompt_length=a.prompt_length,
                domain=a.domain,
                description=a.description,
                placement=a.placement,
            )
            for a in info.adapters
        ],
        limits=tuning_pb2.Limits(**{name: getattr(limits, name) for name in Limits.__dataclass_fields__}),
        server_version=__version__,
    )


def to_score_request(request: tuning_pb2.EvaluateRequest, limits: Limits, scope: str = "") -> ScoreRequest:
    """Convert the wire request; the engine validates contents, this checks the wire shape.

    ``scope`` (the API key id) keeps one key's cached text states from serving another key.
    """
    size = request.ByteSize()
    if size > limits.max_message_bytes:
        raise InvalidRequest(
            "request", f"message size {size} bytes exceeds max_message_bytes {limits.max_message_bytes}"
        )
    if request.num_candidates == 0:
        raise InvalidRequest("num_candidates", "must be at least 1")
    if request.num_candidates > limits.max_candidates:
        raise InvalidRequest(
            "num_candidates", f"{request.num_candidates} exceeds max_candidates {limits.max_candidates}"
        )
    try:
        candidates = unpack_floats(
            request.candidates, (request.num_candidates, request.dimension), "candidates"
        )
    except WireFormatError as exc:
        raise InvalidRequest("candidates", str(exc).removeprefix("candidates: ")) from None
    mode = _MODES.get(request.mode)
    if mode is None:
        raise InvalidRequest("mode", f"unknown scoring mode {request.mode}")
    return ScoreRequest(
        adapter=request.adapter,
        candidates=candidates,
        texts=list(request.texts),
        choices=_choices(request),
        mode=mode,
        cue=request.cue,
        scope=scope,
    )


def _choices(request: tuning_pb2.EvaluateRequest) -> list[list[str]]:
    shared = request.HasField("shared_choices")
    per_example = len(request.example_choices)
    if shared and per_example:
        raise InvalidRequest("shared_choices", "set either shared_choices or example_choices, not both")
    if shared:
        return [list(request.shared_choices.choices)]
    if not per_example:
        raise InvalidRequest("shared_choices", "set one of shared_choices or example_choices")
    if per_example != len(request.texts):
        raise InvalidRequest(
            "example_choices", f"{per_example} choice lists for {len(request.texts)} texts; send one per text"
        )
    return [list(c.choices) for c in request.example_choices]


def to_response(result: ScoreResult) -> tuning_pb2.EvaluateResponse:
    """Pack log-probs ragged: candidate-major, then example, then only that example's real choices."""
    log_probs = np.asarray(result.log_probs, dtype=np.float32)
    counts = np.asarray(result.choice_counts, dtype=np.int64)
    real = np.arange(log_probs.shape[2])[None, :] < counts[:, None]  # [examples, max_choices]
    return tuning_pb2.EvaluateResponse(
        num_candidates=log_probs.shape[0],
        num_examples=log_probs.shape[1],
        log_probs=pack_floats(log_probs[:, real]),
        tokens_processed=result.tokens_processed,
        server_seconds=result.seconds,
    )


class TuningServicer(tuning_pb2_grpc.TuningServicer):
    """Validates, scores on the engine thread and maps every failure through ``error_status``."""

    def __init__(self, engine: ScoringEngine, merge: MergeSettings | None = None) -> None:
        info = engine.info()
        self._limits = info.limits
        self._adapters = frozenset(a.name for a in info.adapters)
        self._server_info = server_info_message(info)
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
            score_request = to_score_request(request, self._limits, scope=current_key_id.get() or "")
            result = await self._merger.score(score_request)
            response = to_response(result)
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
            "mode": tuning_pb2.ScoringMode.Name(request.mode) if request.mode in _MODES else "<unknown>",
            "num_candidates": request.num_candidates,
            "num_examples": len(request.texts),
            "num_choices": len(request.shared_choices.choices)
            + sum(len(c.choices) for c in request.example_choices),
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
