"""The keys file reloads without a restart (on change, or on SIGHUP), and keys expire."""

from __future__ import annotations

import json
import logging
import signal
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cbpt.common.files import write_atomic
from cbpt.server.engine import ScoringEngine
from cbpt.server.front.app import BackgroundServer, serve_in_background
from cbpt.server.front.keys import add_key, load_keys
from cbpt.server.front.service import SERVICE_NAME
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import call_fails, plain_settings
from tests.server.processes import ServerProcess

INFO = tuning_pb2.GetServerInfoRequest()


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


def _until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server did not pick up the keys file in time"
        time.sleep(0.05)


def _accepted(stub: tuning_pb2_grpc.TuningStub, key: str) -> bool:
    try:
        stub.GetServerInfo(INFO, metadata=bearer(key), timeout=10)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        return False
    return True


def test_keys_added_and_removed_while_serving(
    engine: ScoringEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "keys.json"
    alice = add_key(path, "alice")
    settings = plain_settings(api_keys_file=path, keys_reload_seconds=0.05)
    with serve_in_background(engine, settings) as target, grpc.insecure_channel(target) as channel:
        stub = tuning_pb2_grpc.TuningStub(channel)
        assert _accepted(stub, alice)
        bob = add_key(path, "bob")  # `cbpt-server add-key` while the server runs
        _until(lambda: _accepted(stub, bob))
        data = json.loads(path.read_text())
        data["keys"] = [entry for entry in data["keys"] if entry["id"] != "alice"]
        write_atomic(path, json.dumps(data))  # alice revoked (atomically, as add-key writes: no torn reads)
        _until(lambda: not _accepted(stub, alice))


def _refused_for_the_file(stub: tuning_pb2_grpc.TuningStub, key: str) -> bool:
    try:
        stub.GetServerInfo(INFO, metadata=bearer(key), timeout=10)
    except grpc.RpcError as error:
        return error.code() == grpc.StatusCode.UNAVAILABLE and "keys file" in (error.details() or "")
    return False


def test_a_broken_keys_file_refuses_every_key_loudly_until_fixed(
    engine: ScoringEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo made while revoking must not leave the revoked key working: a file that fails to reload
    refuses every key (UNAVAILABLE, retryable) until it is fixed, logged at ERROR, counted in a metric
    and shown by health (the Tuning service NOT_SERVING, which the container healthcheck asks)."""
    caplog.set_level(logging.INFO)
    path = tmp_path / "keys.json"
    alice, bob = add_key(path, "alice"), add_key(path, "bob")
    good = path.read_text()
    settings = plain_settings(api_keys_file=path, keys_reload_seconds=0.05, metrics_port=0)
    server = BackgroundServer(engine, settings)
    target = server.start()
    try:
        with grpc.insecure_channel(target) as channel:
            stub, health = tuning_pb2_grpc.TuningStub(channel), health_pb2_grpc.HealthStub(channel)
            assert _accepted(stub, alice)
            path.write_text(good.replace('"id": "alice"', '"id": "alice",,'))  # revoking alice, with a typo
            _until(lambda: _refused_for_the_file(stub, bob))
            assert _refused_for_the_file(stub, alice)
            refused = call_fails(stub.GetServerInfo, INFO, metadata=bearer(alice))
            assert refused.retry_seconds is not None and refused.retry_seconds > 0
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert any(r.getMessage().startswith("API keys file not reloaded") for r in errors)
            assert (
                _metric(server, "cbpt_keys_file_ok") == 0
                and _metric(server, "cbpt_keys_reload_failures_total") == 1
            )
            _until(lambda: _health(health, SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING)
            assert _health(health, "") == health_pb2.HealthCheckResponse.SERVING  # the process itself is fine
            write_atomic(path, good)  # fixed
            _until(lambda: not _refused_for_the_file(stub, bob))
            assert _accepted(stub, alice) and _metric(server, "cbpt_keys_file_ok") == 1
            _until(lambda: _health(health, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING)
    finally:
        server.stop(grace=1.0)


def _health(stub: health_pb2_grpc.HealthStub, service: str) -> int:
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def _metric(server: BackgroundServer, name: str) -> float:
    body = (
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    )
    return next(float(line.split()[-1]) for line in body.splitlines() if line.startswith(name + " "))


def test_an_expired_key_is_refused(engine: ScoringEngine, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    now = datetime.now(timezone.utc)
    old = add_key(path, "old", expires=now - timedelta(seconds=1))
    fresh = add_key(path, "fresh", expires=now + timedelta(days=30))
    assert load_keys(path)[0].expires is not None
    with (
        serve_in_background(engine, plain_settings(api_keys_file=path)) as target,
        grpc.insecure_channel(target) as ch,
    ):
        stub = tuning_pb2_grpc.TuningStub(ch)
        refused = call_fails(stub.GetServerInfo, INFO, metadata=bearer(old))
        assert refused.code == grpc.StatusCode.UNAUTHENTICATED and "'old' expired at" in refused.message
        assert _accepted(stub, fresh)


def test_sighup_reloads_the_keys_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "alice")
    server = ServerProcess("tests.server.tiny_server", "--keys", str(path), "--keys-reload", "0")
    try:
        with grpc.insecure_channel(server.address()) as channel:
            stub = tuning_pb2_grpc.TuningStub(channel)
            bob = add_key(path, "bob")
            assert not _accepted(stub, bob)  # no polling: only the signal reloads
            server.process.send_signal(signal.SIGHUP)
            server.wait_for("API keys reloaded")
            assert _accepted(stub, bob)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
    finally:
        server.kill()
