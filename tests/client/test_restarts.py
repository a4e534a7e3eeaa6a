"""The client rides out a server restart, and any early exit of ``cbpt tune`` says how to resume
(Trust #5)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from cbpt.client.cli import app
from cbpt.client.cli import progress as progress_module
from cbpt.client.errors import ServerUnavailable
from cbpt.client.rpc.sdk import TuningClient
from cbpt.common.net import free_port
from tests.client.helpers import TaskFactory

runner = CliRunner()
TEXTS = ["Review: a fine film", "Review: so dull"]


def cbpt(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def _vector(folder: Path) -> np.ndarray:
    return load_file(folder / "vector.safetensors")["vector"]


def _resume_words(output: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith("resume with: "))
    words = shlex.split(line.removeprefix("resume with: "))
    assert words[:2] == ["cbpt", "tune"] and words[-1] == "--resume"
    return words[1:]


def test_unavailable_is_retried_for_the_window_once_the_server_has_answered(engine) -> None:
    from cbpt.server.front.app import BackgroundServer
    from cbpt.server.settings import ServerSettings

    port = free_port()
    server = BackgroundServer(
        engine,
        ServerSettings.from_flags(
            host="127.0.0.1", port=port, insecure=True, allow_no_auth=True, grace_seconds=0
        ),
    )
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # a fake clock: no test time is spent waiting
        waits.append(seconds)
        now[0] += seconds

    server.start()
    client = TuningClient(
        f"127.0.0.1:{port}", max_retries=2, retry_window=30.0, sleep=sleep, clock=lambda: now[0], timeout=5
    )
    with client:
        client.info()
        server.stop(grace=0)
        with pytest.raises(ServerUnavailable, match="unavailable"):
            client.evaluate("none", np.zeros((1, 0)), TEXTS, [" yes", " no"])
    assert len(waits) > 2 and sum(waits) == pytest.approx(30.0)  # the window, not the 2 retries


# -- real server processes, killed and restarted -------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    testing = pytest.importorskip("cbpt.server.testing")
    folder = tmp_path_factory.mktemp("tiny-model")
    bundle = testing.tiny_bundle(0)
    bundle.model.save_pretrained(folder)
    bundle.tokenizer.save_pretrained(folder)
    return folder


class ServerProcess:
    """``cbpt-server serve`` on the tiny model, as its own process (so it can be SIGKILLed)."""

    def __init__(self, model_dir: Path, port: int, log: Path) -> None:
        self.log = log
        command = [sys.executable, "-m", "cbpt.server.cli", "serve", "--model", str(model_dir), "--insecure",
                   "--allow-no-auth", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        self._log_file = log.open("w")
        self.process = subprocess.Popen(command, stdout=self._log_file, stderr=subprocess.STDOUT)
        self.port = port

    def wait_until_serving(self) -> None:
        from cbpt.server.front.probe import wait_until_serving

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            wait_until_serving(channel, 120, service="", alive=lambda: self.process.poll() is None)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        self._log_file.close()


@pytest.fixture
def servers(model_dir: Path, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.kill()


def test_tuning_rides_out_a_restart_and_says_how_to_resume_when_the_server_stays_away(
    model_dir: Path, servers: list[ServerProcess], make_task: TaskFactory, tmp_path: Path, monkeypatch
) -> None:
    port = free_port()

    def start(name: str) -> ServerProcess:
        servers.append(ServerProcess(model_dir, port, tmp_path / f"{name}.log"))
        return servers[-1]

    start("first").wait_until_serving()
    task_path = make_task()
    common = ["--server", f"127.0.0.1:{port}", "--budget", 16, "--popsize", 4, "--seed", 1]
    assert cbpt("tune", task_path, "--out", tmp_path / "whole", *common).exit_code == 0
    whole = _vector(tmp_path / "whole")

    update = progress_module.TuningProgress.update
    restart = {"after": 1, "again": True}

    def kill_the_server_after_generation_1(self, row) -> None:
        update(self, row)
        if row.generation == restart["after"]:
            servers[-1].kill()  # SIGKILL: no drain, the next call finds nobody
            if restart["again"]:
                start("restarted")  # comes up while the client retries (no wait here)

    monkeypatch.setattr(progress_module.TuningProgress, "update", kill_the_server_after_generation_1)
    rode_out = cbpt("tune", task_path, "--out", tmp_path / "restarted", *common, "--retry-window", 180)
    assert rode_out.exit_code == 0, rode_out.output
    np.testing.assert_array_equal(_vector(tmp_path / "restarted"), whole)
    assert "Evaluate" in (tmp_path / "restarted.log").read_text()  # generations 2-3 ran on the new process

    servers[-1].wait_until_serving()
    restart["again"] = False
    stays_away = cbpt("tune", task_path, "--out", tmp_path / "away", *common, "--retry-window", 1)
    assert stays_away.exit_code == 1, stays_away.output
    assert "error: server" in stays_away.output and "unavailable" in stays_away.output
    assert "checkpoint saved at" in stays_away.output and "Traceback" not in stays_away.output
    monkeypatch.setattr(progress_module.TuningProgress, "update", update)
    start("later").wait_until_serving()
    resumed = runner.invoke(app, _resume_words(stays_away.output))
    assert resumed.exit_code == 0, resumed.output
    np.testing.assert_array_equal(_vector(tmp_path / "away"), whole)


def test_sigterm_stops_like_ctrl_c_and_prints_the_resume_command(
    server: str, make_task: TaskFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_path = make_task()
    common = ["--server", server, "--budget", 16, "--popsize", 4, "--seed", 4]
    assert cbpt("tune", task_path, "--out", tmp_path / "whole", *common).exit_code == 0
    update = progress_module.TuningProgress.update

    def sigterm_after_generation_1(self, row) -> None:
        update(self, row)
        if row.generation == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(progress_module.TuningProgress, "update", sigterm_after_generation_1)
    terminated = cbpt("tune", task_path, "--out", tmp_path / "cut", *common)
    assert terminated.exit_code == 143 and "terminated (SIGTERM)" in terminated.output
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the run's only
    monkeypatch.setattr(progress_module.TuningProgress, "update", update)
    assert runner.invoke(app, _resume_words(terminated.output)).exit_code == 0
    np.testing.assert_array_equal(_vector(tmp_path / "cut"), _vector(tmp_path / "whole"))


def test_a_negative_retry_window_is_input_to_fix() -> None:
    result = cbpt("info", "--retry-window", -1)
    assert result.exit_code == 2 and "retry_window must be at least 0" in result.output
