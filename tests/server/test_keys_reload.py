"""The keys file reloads without a restart (on change, or on SIGHUP), and keys expire."""

from __future__ import annotations

import json
import logging
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest

from cbpt.server.app import serve_in_background
from cbpt.server.engine import ScoringEngine
from cbpt.server.keys import add_key, load_keys
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


def test_keys_added_removed_and_broken_files_while_serving(
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
        path.write_text(json.dumps(data))  # alice revoked
        _until(lambda: not _accepted(stub, alice))
        path.write_text("{not json")  # a broken edit keeps the keys in force
        _until(lambda: any(r.getMessage().startswith("API keys file not reloaded") for r in caplog.records))
        assert _accepted(stub, bob)


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
