"""SIGTERM drains honestly: NOT_SERVING to new probes, in-flight calls finish, prompt exit (finding 4).

Before: a probe after SIGTERM got "connection refused" (the port closed at once), a call longer
than the grace got UNAVAILABLE "Cancelling all calls", and the process lingered while the engine
thread ran that call to its end.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import grpc
import pytest

from cbpt.server.front.probe import check
from cbpt.v1 import tuning_pb2_grpc
from tests.server.helpers import candidates, evaluate_request, failure
from tests.server.processes import ServerProcess

TEXTS = [f"Review: film number {i} was fine\nSentiment:" for i in range(16)]
LONG = evaluate_request(candidates(8, seed=7), texts=TEXTS)  # 136 passes of >= 20 ms
SHORT = evaluate_request(candidates(1, seed=8), texts=TEXTS[:1])


@pytest.fixture
def start() -> Iterator:
    started: list[ServerProcess] = []

    def run(grace: float) -> ServerProcess:
        server = ServerProcess("tests.server.tiny_server", "--grace", str(grace))
        started.append(server)
        return server

    yield run
    for server in started:
        server.kill()


def test_sigterm_answers_not_serving_finishes_the_call_and_exits_when_done(start) -> None:
    server = start(grace=120)
    target = server.address()
    with grpc.insecure_channel(target) as channel:
        stub = tuning_pb2_grpc.TuningStub(channel)
        assert stub.Evaluate(SHORT, timeout=60).num_candidates == 1  # warm
        long_call = stub.Evaluate.future(LONG, timeout=120)
        server.wait_for_passes(3)
        server.process.send_signal(signal.SIGTERM)
        server.wait_for("shutting down")
        with grpc.insecure_channel(target) as probe:  # a new connection, as a load balancer's probe
            assert check(probe, timeout=10) == "NOT_SERVING"
            refused = _fails(tuning_pb2_grpc.TuningStub(probe).Evaluate, SHORT)
        assert refused.code == grpc.StatusCode.UNAVAILABLE and "draining" in refused.message
        assert refused.retry_seconds is not None
        response = long_call.result()  # the in-flight call completes
        assert response.num_candidates == 8
    # The process ends once the call is done, not after the 120 s grace.
    assert server.process.wait(60) == 0
    assert "stopped" in server.messages()
    assert "grace over: stopping the calls still running at their next chunk" not in server.messages()


def test_a_call_longer_than_the_grace_is_stopped_as_retryable_and_the_process_exits(start) -> None:
    server = start(grace=0.5)
    target = server.address()
    with grpc.insecure_channel(target) as channel:
        stub = tuning_pb2_grpc.TuningStub(channel)
        long_call = stub.Evaluate.future(LONG, timeout=120)
        server.wait_for_passes(3)
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as caught:
            long_call.result()
    stopped = failure(caught.value)
    assert stopped.code == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in stopped.message and stopped.retry_seconds is not None
    assert server.process.wait(60) == 0
    messages = server.messages()
    assert "grace over: stopping the calls still running at their next chunk" in messages
    assert "calls stopped for shutdown" in messages


def _fails(method, request):
    with pytest.raises(grpc.RpcError) as caught:
        method(request, timeout=10)
    return failure(caught.value)
