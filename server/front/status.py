"""The one mapping from server errors to gRPC statuses, with grpcio-status rich details.

``InvalidRequest`` -> INVALID_ARGUMENT with a ``BadRequest`` field violation; ``QuotaExceeded``
-> RESOURCE_EXHAUSTED with ``RetryInfo``; ``AuthenticationFailed`` -> UNAUTHENTICATED;
``ServerShuttingDown`` and ``BackendUnavailable`` -> UNAVAILABLE with ``RetryInfo`` (a retry finds
the restarted server or replica); ``CallCancelled`` -> CANCELLED; anything else -> INTERNAL with a
fixed message (the log has the type and frames, never the text).
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cbpt.server.errors import (
    AuthenticationFailed,
    BackendUnavailable,
    CallCancelled,
    InvalidRequest,
    QuotaExceeded,
    ServerShuttingDown,
)

INTERNAL_MESSAGE = "internal server error; the server log has the details"


def error_status(error: BaseException) -> grpc.Status:
    status = status_pb2.Status()
    if isinstance(error, InvalidRequest):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.description
        )
        detail = error_details_pb2.BadRequest(field_violations=[violation])
        _set(status, code_pb2.INVALID_ARGUMENT, str(error), detail)
    elif isinstance(error, QuotaExceeded):
        _set(status, code_pb2.RESOURCE_EXHAUSTED, str(error), _retry_info(error.retry_after))
    elif isinstance(error, (ServerShuttingDown, BackendUnavailable)):
        _set(status, code_pb2.UNAVAILABLE, str(error), _retry_info(error.retry_after))
    elif isinstance(error, AuthenticationFailed):
        _set(status, code_pb2.UNAUTHENTICATED, str(error))
    elif isinstance(error, CallCancelled):
        _set(status, code_pb2.CANCELLED, str(error))
    else:
        _set(status, code_pb2.INTERNAL, INTERNAL_MESSAGE)
    return rpc_status.to_status(status)


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(max(1, math.ceil(seconds * 1000)))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def _set(status: status_pb2.Status, code: int, message: str, detail: Message | None = None) -> None:
    status.code = code
    status.message = message
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
