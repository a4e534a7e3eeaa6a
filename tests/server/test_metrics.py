"""The Prometheus endpoint: off by default, loopback, and the figures an operator needs."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest

from cbpt.server.engine import ScoringEngine
from cbpt.server.front.app import BackgroundServer, serve_in_background
from cbpt.server.settings import ServerSettings
from cbpt.v1 import tuning_pb2_grpc
from tests.server.helpers import GatedEngine, call_fails, candidates, evaluate_request, plain_settings


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and line.split(" ")[0] == name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def test_metrics_are_off_by_default_and_loopback_by_default(engine: ScoringEngine) -> None:
    assert (
        ServerSettings().metrics.metrics_port is None and ServerSettings().metrics.metrics_host == "127.0.0.1"
    )
    server = BackgroundServer(engine, plain_settings())
    server.start()
    try:
        assert server.metrics_port is None
    finally:
        server.stop(grace=0)


def test_metrics_report_queue_latency_throughput_cache_refusals_and_cancellations(
    engine: ScoringEngine,
) -> None:
    gated = GatedEngine(engine)
    server = BackgroundServer(gated, plain_settings(metrics_port=0))  # type: ignore[arg-type]
    target = server.start()
    assert server.metrics_port is not None
    try:
        with grpc.insecure_channel(target) as channel:
            stub = tuning_pb2_grpc.TuningStub(channel)
            running = stub.Evaluate.future(evaluate_request(), timeout=30)
            assert gated.entered.wait(10)
            queued = stub.Evaluate.future(evaluate_request(candidates(1)), timeout=30)
            _until(lambda: _value(_scrape(server.metrics_port), "cbpt_queue_depth") == 1)  # type: ignore[arg-type]
            queued.cancel()
            gated.release.set()
            assert running.result().num_candidates == 2
            assert (
                call_fails(stub.Evaluate, evaluate_request(candidates(1, 5))).code
                == grpc.StatusCode.INVALID_ARGUMENT
            )
        # The server learns of the client's cancel asynchronously: wait for it rather than race it.
        cancelled = 'cbpt_cancellations_total{reason="cancelled"} 1.0'
        _until(lambda: cancelled in _scrape(server.metrics_port))  # type: ignore[arg-type]
        text = _scrape(server.metrics_port)
    finally:
        server.stop(grace=0)
    assert _value(text, "cbpt_queue_depth") == 0
    assert 'cbpt_call_seconds_count{code="OK"} 1.0' in text
    assert _value(text, "cbpt_sequences_total") >= 4  # 2 candidates x 2 texts
    assert _value(text, "cbpt_sequences_per_second") > 0
    assert _value(text, "cbpt_candidate_evaluations_total") == 2
    assert "cbpt_text_cache_bytes" in text
    assert 'cbpt_refusals_total{reason="invalid"} 1.0' in text
    assert cancelled in text


def test_a_taken_metrics_port_is_a_clear_error(engine: ScoringEngine) -> None:
    from cbpt.server.errors import ConfigError

    with serve_in_background(engine, plain_settings(metrics_port=0)):
        pass
    first = BackgroundServer(engine, plain_settings(metrics_port=0))
    first.start()
    try:
        with pytest.raises(ConfigError, match="cannot serve metrics"):
            BackgroundServer(engine, plain_settings(metrics_port=first.metrics_port)).start()
    finally:
        first.stop(grace=0)


def _until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)
