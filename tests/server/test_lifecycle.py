"""Health, graceful shutdown (drain in-flight calls, refuse new ones) and reflection on/off."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from cbpt.server.engine import ScoringEngine
from cbpt.server.front.app import BackgroundServer, serve_in_background
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import GatedEngine, evaluate_request, plain_settings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_is_serving_for_server_and_service(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "cbpt.v1.Tuning"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=20).status == SERVING
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=20)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_graceful_shutdown_drains_in_flight_calls_and_refuses_new(engine: ScoringEngine) -> None:
    gated = GatedEngine(engine)
    server = BackgroundServer(gated, plain_settings(grace_seconds=20))  # type: ignore[arg-type]
    target = server.start()
    stopper = threading.Thread(target=server.stop)
    released = time.monotonic()
    try:
        with grpc.insecure_channel(target) as channel:
            stub = tuning_pb2_grpc.TuningStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="cbpt.v1.Tuning"), timeout=30
            )
            assert next(watch).status == SERVING
            in_flight = stub.Evaluate.future(evaluate_request(), timeout=30)
            assert gated.entered.wait(10)

            stopper.start()
            assert next(watch).status == NOT_SERVING
            watch.cancel()
            assert _refused_within(stub, seconds=10)

            released = time.monotonic()
            gated.release.set()
            response = in_flight.result()  # the in-flight call completes within the grace period
            assert response.num_candidates == 2 and len(response.log_probs) == 2 * 2 * 2 * 4
    finally:
        gated.release.set()
        if stopper.ident is None:
            server.stop(grace=0)
        stopper.join(30)
    # Stopping did not take the whole 20 s grace period: it ended when the last call finished.
    assert not stopper.is_alive()
    assert time.monotonic() - released < 10


def _refused_within(stub: tuning_pb2_grpc.TuningStub, seconds: float) -> bool:
    """New calls are refused once the server stops accepting (shortly after health flips)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            stub.GetServerInfo(tuning_pb2.GetServerInfoRequest(), timeout=2)
        except grpc.RpcError as error:
            return error.code() == grpc.StatusCode.UNAVAILABLE
        time.sleep(0.05)
    return False


def test_reflection_off_by_default(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        ProtoReflectionDescriptorDatabase(channel).get_services()
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_on_lists_and_describes_the_service(engine: ScoringEngine) -> None:
    with (
        serve_in_background(engine, plain_settings(reflection=True)) as target,
        grpc.insecure_channel(target) as channel,
    ):
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"cbpt.v1.Tuning", "grpc.health.v1.Health"} <= services
        described = database.FindFileContainingSymbol("cbpt.v1.EvaluateRequest")
        assert described.name == "cbpt/v1/tuning.proto"
        assert "EvaluateResponse" in {m.name for m in described.message_type}
