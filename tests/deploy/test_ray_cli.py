"""``cbpt-server serve --backend ray``: a front that joins a Ray cluster, deploys replicas of the engine
it names, serves through them without loading the model itself, and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

pytest.importorskip("ray", reason="the Ray backend needs the [ray] extra")

from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import TEXTS, candidates, evaluate_request


def test_serve_on_a_ray_cluster_end_to_end(ray_session: Any, model_folder: Path, tmp_path: Path) -> None:
    from ray import serve

    address = ray_session.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "cbpt.server.cli", "serve", "--model", str(model_folder / "model")]
    command += ["--insecure", "--port", "0", "--bbt-dimension", "8", "--prompt-length", "2", "--log-json"]
    command += ["--backend", "ray", "--ray-address", address, "--replicas", "1", "--replica-cpus", "0.25"]
    command += ["--no-shipped-generators", "--grace-seconds", "5", "--allow-no-auth"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBPT_")}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    lines: list[str] = []
    try:
        serving = _wait_for(process, lines, "serving")
        with grpc.insecure_channel(serving["address"]) as channel:
            stub = tuning_pb2_grpc.TuningStub(channel)
            info = stub.GetServerInfo(tuning_pb2.GetServerInfoRequest(), timeout=60)
            scored = stub.Evaluate(evaluate_request(candidates(2, dimension=8), TEXTS), timeout=120)
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0
    finally:
        if process.poll() is None:
            process.kill()
        serve.delete("cbpt")  # on a cluster the replicas outlive the front, by design
    lines += process.stderr.read().splitlines()  # type: ignore[union-attr]
    messages = [json.loads(line)["message"] for line in lines if line.startswith("{")]
    assert {a.name: a.dimension for a in info.adapters}["bbt"] == 8
    assert scored.num_candidates == 2 and scored.tokens_processed > 0
    assert "ray backend ready" in messages and "shutting down" in messages
    assert serving["model_id"] == str(model_folder / "model")
    assert not (set(os.listdir(tmp_path)) - {".ray"}), "the front writes nothing to its directory"


def _wait_for(process: subprocess.Popen, lines: list[str], message: str) -> dict[str, Any]:
    """The first JSON log line with ``message`` (stderr closes if the server exits first)."""
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)
        if line.startswith("{") and json.loads(line)["message"] == message:
            return json.loads(line)
    raise AssertionError(f"server exited before {message!r}: {lines[-20:]}")
