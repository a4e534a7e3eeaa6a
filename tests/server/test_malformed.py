"""Request bytes that are not the method's message: INVALID_ARGUMENT, one WARNING, no traceback."""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cbpt.v1 import tuning_pb2_grpc
from tests.server.helpers import evaluate_request, failure

GARBAGE = [b"\xff\xff\xff", b"\x0a\xff\x01", b"\x22\x05abc"]  # bad tag; truncated field; short bytes


@pytest.mark.parametrize("method", ["/cbpt.v1.Tuning/Evaluate", "/cbpt.v1.Tuning/GetServerInfo"])
@pytest.mark.parametrize("payload", GARBAGE)
def test_malformed_bytes_are_invalid_argument_and_a_plain_warning(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture, method: str, payload: bytes
) -> None:
    """Finding 7: before, UNKNOWN "Unexpected <class DecodeError>" and an ERROR traceback."""
    caplog.set_level(logging.INFO)
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(method)(payload, timeout=20)
    refused = failure(caught.value)
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.message == f"request: {len(payload)} bytes that are not a valid {_name(method)} message"
    assert refused.field_violations == [("request", refused.message.removeprefix("request: "))]
    assert "DecodeError" not in refused.message and "Unexpected" not in refused.message
    records = [r for r in caplog.records if r.getMessage() == "malformed request"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING and records[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # ... and the server keeps serving.
    assert tuning_pb2_grpc.TuningStub(channel).Evaluate(evaluate_request(), timeout=20).num_candidates == 2


def test_health_is_guarded_too(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/grpc.health.v1.Health/Check")(b"\xff\xff", timeout=20)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=20)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _name(method: str) -> str:
    return (
        "cbpt.v1."
        + {"Evaluate": "EvaluateRequest", "GetServerInfo": "GetServerInfoRequest"}[method.rsplit("/", 1)[1]]
    )
