"""Server errors as gRPC statuses, read from the error table, with grpcio-status rich details.

The code is the error class's ``status_code`` (``server/errors.py``). An ``InvalidRequest`` adds a
``BadRequest`` field violation, an error with a ``retry_after`` a ``RetryInfo`` (a retry finds the
restarted server or replica, or a free queue place). Anything that is not a ``ServerError``, or is
one the table answers INTERNAL, gets a fixed message: the log has the type and frames, never the text.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from cbpt.server.errors import InvalidRequest, ServerError, StatusCodeName

INTERNAL_MESSAGE = "internal server error; the server log has the details"


def status_code_name(error: BaseException) -> StatusCodeName:
    """The name of the status code ``error`` is answered with (``INTERNAL`` for any unexpected one)."""
    return error.status_code if isinstance(error, ServerError) else "INTERNAL"


def error_status(error: BaseException) -> grpc.Status:
    status = status_pb2.Status(code=code_pb2.Code.Value(status_code_name(error)), message=INTERNAL_MESSAGE)
    if status.code == code_pb2.INTERNAL:
        return rpc_status.to_status(status)
    status.message = str(error)
    if isinstance(error, InvalidRequest):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.description
        )
        _attach(status, error_details_pb2.BadRequest(field_violations=[violation]))
    if isinstance(error, ServerError) and error.retry_after is not None:
        _attach(status, _retry_info(error.retry_after))
    return rpc_status.to_status(status)


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(max(1, math.ceil(seconds * 1000)))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def _attach(status: status_pb2.Status, detail: Message) -> None:
    packed = any_pb2.Any()
    packed.Pack(detail)
    status.details.append(packed)
