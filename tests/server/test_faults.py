"""Faults: the server is SIGKILLed mid-tune and restarted; a client process dies mid-call.

- ``cbpt tune`` against a server process that is killed after a few generations: the client rides
  the restart out with its retries or, once those are spent, ``cbpt tune --resume`` continues from
  the checkpoint; either way it ends on exactly the vector of an uninterrupted run.
- A client killed in the middle of a long call frees the engine within one chunk.
(SIGTERM draining is tests/server/test_draining.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from safetensors.numpy import load_file

from cbpt.common.net import free_port
from cbpt.v1 import tuning_pb2_grpc
from tests.client.helpers import write_task
from tests.server.helpers import candidates, evaluate_request
from tests.server.processes import ROOT, ServerProcess

TUNE = ["--adapter", "bbt-cue", "--budget", "48", "--popsize", "4", "--seed", "3", "--select-from", "mean"]


def _task(folder: Path) -> Path:
    return write_task(folder, task_name="faults", per_class=8, test_per_class=2)


def _cbpt(*args: object, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-c", "from cbpt.client.cli import app; app()", *map(str, args)]
    return subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _server(port: int) -> ServerProcess:
    """A tiny server whose passes are slow enough that a tune takes several seconds."""
    return ServerProcess(
        "tests.server.tiny_server", "--port", str(port), "--pass-seconds", "0.01", "--batch-sequences", "16"
    )


def test_sigkill_mid_tune_then_restart_ends_on_the_uninterrupted_vector(tmp_path: Path) -> None:
    task = _task(tmp_path / "project")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBPT_")}
    env["CBPT_KEY_FILE"] = str(tmp_path / "checkpoint.key")
    port = free_port()
    target = f"127.0.0.1:{port}"
    server = _server(port)
    try:
        server.address()
        whole = _cbpt("tune", task, "--out", tmp_path / "whole", "--server", target, *TUNE, env=env)
        assert whole.wait(300) == 0, whole.communicate()[0]

        cut = _cbpt("tune", task, "--out", tmp_path / "cut", "--server", target, *TUNE, env=env)
        server.wait_for_more("evaluate", 6)  # a few generations in
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(30)
        server = _server(port)  # the restart
        server.address()
        code = cut.wait(300)
        output = cut.communicate()[0]
        print(
            "\nSIGKILL mid-tune: the client "
            f"{'rode out the restart' if code == 0 else f'exited {code}; resuming'}"
        )
        if code != 0:  # the client's retries were spent before the restart: resume from the checkpoint
            assert (tmp_path / "cut" / "checkpoint.cbpt").exists(), output
            resumed = _cbpt(
                "tune", task, "--out", tmp_path / "cut", "--server", target, *TUNE, "--resume", env=env
            )
            assert resumed.wait(300) == 0, resumed.communicate()[0]
    finally:
        server.kill()
    expected = load_file(tmp_path / "whole" / "vector.safetensors")["vector"]
    assert (load_file(tmp_path / "cut" / "vector.safetensors")["vector"] == expected).all()


CLIENT = """
import sys
import grpc
from cbpt.v1 import tuning_pb2_grpc
from tests.server.test_faults import LONG
with grpc.insecure_channel(sys.argv[1]) as channel:
    tuning_pb2_grpc.TuningStub(channel).Evaluate(LONG, timeout=600)
"""
TEXTS = [f"Review: film number {i} was fine\nSentiment:" for i in range(16)]
LONG = evaluate_request(candidates(8, seed=7), texts=TEXTS)  # 8 prefix passes + 128 rows, one per pass
SHORT = evaluate_request(candidates(1, seed=8), texts=TEXTS[:1])


def test_a_killed_client_frees_the_engine_within_one_chunk() -> None:
    server = ServerProcess("tests.server.tiny_server", "--pass-seconds", "0.02", "--batch-sequences", "1")
    try:
        target = server.address()
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        client = subprocess.Popen([sys.executable, "-c", CLIENT, target], cwd=ROOT, env=env)
        server.wait_for_passes(5)
        client.kill()  # SIGKILL: no goodbye, the connection just drops
        client.wait(30)
        abandoned = server.wait_for("evaluate abandoned")
        assert abandoned["reason"] == "cancelled" and abandoned["stage"] == "running"
        at_abandon = _passes_before(server, abandoned)
        with grpc.insecure_channel(target) as channel:
            assert tuning_pb2_grpc.TuningStub(channel).Evaluate(SHORT, timeout=60).num_candidates == 1
        # After the engine noticed: at most the chunk that was running, then the short call's 2 passes.
        assert server.passes() - at_abandon <= 1 + 2, (at_abandon, server.passes())
    finally:
        server.kill()


def _passes_before(server: ServerProcess, line: dict) -> int:
    index = server.lines.index(line)
    return max(
        (item["steps"] for item in server.lines[:index] if item["message"] == "forward pass"), default=0
    )
