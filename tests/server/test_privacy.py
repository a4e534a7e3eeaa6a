"""What a client sends never reaches the server's logs or disk, and errors never echo it back in logs."""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cbpt.server.engine import EngineInfo, ScoreRequest, ScoringEngine
from cbpt.server.front.app import serve_in_background
from cbpt.server.logs import JsonLineFormatter, TextFormatter
from cbpt.server.testing import tiny_engine
from cbpt.v1 import tuning_pb2_grpc
from tests.server.helpers import call_fails, candidates, evaluate_request, plain_settings

# Generous: a call that misses its deadline on a loaded machine is not what these tests are about (CI once
# failed here under load; the tiny engine answers in milliseconds when the machine is free).
CALL_SECONDS = 120
SECRET_TEXT = "Review: zq-private-diagnosis-7731 was great\nSentiment:"
SECRET_CHOICE = " zqchoice"
MARKERS = ("zq-private", "zqchoice", "7731", "zqadapter")


class ExplodingEngine:
    """The real engine's info, but scoring fails with the request's text in its message.

    It stands for an unexpected bug: the only way to show what the INTERNAL path logs.
    """

    def __init__(self, engine: ScoringEngine) -> None:
        self._engine = engine

    def info(self) -> EngineInfo:
        return self._engine.info()

    def job(self, requests: list[ScoreRequest]) -> ExplodingEngine:
        self._request = requests[0]
        return self

    def step(self) -> bool:
        request = self._request
        raise RuntimeError(f"tokenizer exploded on {request.texts[0]!r} / {request.choices.lists[0][0]!r}")


@pytest.fixture
def server_logs(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Everything logged, at DEBUG, through both of the server's formatters."""
    caplog.set_level(logging.DEBUG)
    text, json_lines = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(text), logging.StreamHandler(json_lines)]
    handlers[0].setFormatter(TextFormatter())
    handlers[1].setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield text, json_lines
    finally:
        for handler in handlers:
            root.removeHandler(handler)


@pytest.fixture(scope="module")
def roomy_engine() -> ScoringEngine:
    """Default limits, so that the marker strings fit the tiny tokenizer's token limits."""
    return tiny_engine(bbt_dimension=16)


def _requests():
    yield evaluate_request(texts=[SECRET_TEXT, SECRET_TEXT], choices=[SECRET_CHOICE, " negative"])
    yield evaluate_request(texts=[SECRET_TEXT], example_choices=[[SECRET_CHOICE, " b", " positive"]])
    yield evaluate_request(texts=[SECRET_TEXT, ""], choices=[SECRET_CHOICE, " no"])  # invalid: empty text
    yield evaluate_request(texts=[SECRET_TEXT * 80], choices=[SECRET_CHOICE, " no"])  # invalid: too long
    yield evaluate_request(texts=[SECRET_TEXT], choices=[SECRET_CHOICE, ""])  # invalid: empty choice
    yield evaluate_request(
        texts=[SECRET_TEXT], choices=[SECRET_CHOICE], adapter="zqadapter"
    )  # unknown adapter


def test_no_text_or_choice_in_server_logs_at_debug(
    roomy_engine: ScoringEngine,
    server_logs: tuple[io.StringIO, io.StringIO],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        serve_in_background(roomy_engine, plain_settings()) as target,
        grpc.insecure_channel(target) as channel,
    ):
        stub = tuning_pb2_grpc.TuningStub(channel)
        codes = []
        for request in _requests():
            try:
                stub.Evaluate(request, timeout=CALL_SECONDS)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
    assert codes[:2] == [grpc.StatusCode.OK] * 2, codes
    assert set(codes[2:]) == {grpc.StatusCode.INVALID_ARGUMENT}, codes

    text, json_lines = (s.getvalue() for s in server_logs)
    evaluate_lines = [line for line in json_lines.splitlines() if '"message":"evaluate"' in line]
    assert len(evaluate_lines) == len(codes), evaluate_lines  # one structured line per call ...
    assert '"num_candidates":2' in evaluate_lines[0] and '"tokens":' in evaluate_lines[0]
    assert '"field":"texts[1]"' in evaluate_lines[2]
    for marker in MARKERS:  # ... and not one of them carries the client's words
        assert marker not in text
        assert marker not in json_lines
        assert not any(marker in record.getMessage() for record in caplog.records)


def test_unexpected_error_is_internal_and_logged_without_its_message(
    engine: ScoringEngine, server_logs: tuple[io.StringIO, io.StringIO]
) -> None:
    exploding = ExplodingEngine(engine)
    with (
        serve_in_background(exploding, plain_settings()) as target,  # type: ignore[arg-type]
        grpc.insecure_channel(target) as channel,
    ):
        stub = tuning_pb2_grpc.TuningStub(channel)
        failed = call_fails(
            stub.Evaluate, evaluate_request(texts=[SECRET_TEXT], choices=[SECRET_CHOICE, " no"])
        )
        assert failed.code == grpc.StatusCode.INTERNAL
        assert "zq" not in failed.message
    text, json_lines = (s.getvalue() for s in server_logs)
    assert "RuntimeError at" in text and "evaluate failed" in text  # the type and where, for the operator
    for marker in MARKERS:
        assert marker not in text and marker not in json_lines


class _FileWrites:
    """Records file writes and directory changes (via audit hooks) while ``active``."""

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    EVENTS = ("os.mkdir", "os.rename", "os.remove", "os.symlink", "os.link", "shutil.copyfile")

    def __init__(self) -> None:
        self.active = False
        self.seen: list[str] = []
        sys.addaudithook(self)

    def __call__(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & self.WRITE_FLAGS
            )
            if writes:
                self.seen.append(f"open {path} {mode} {flags}")
        elif event in self.EVENTS:
            self.seen.append(f"{event} {args[0]}")


_WRITES = _FileWrites()  # audit hooks cannot be removed, so one per process


def test_evaluate_writes_no_files(
    roomy_engine: ScoringEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with (
        serve_in_background(roomy_engine, plain_settings()) as target,
        grpc.insecure_channel(target) as channel,
    ):
        stub = tuning_pb2_grpc.TuningStub(channel)
        _WRITES.active = True
        try:
            stub.Evaluate(
                evaluate_request(candidates(3), texts=[SECRET_TEXT, SECRET_TEXT]), timeout=CALL_SECONDS
            )
            stub.Evaluate(
                evaluate_request(texts=[SECRET_TEXT], example_choices=[[SECRET_CHOICE, " b"]]),
                timeout=CALL_SECONDS,
            )
        finally:
            _WRITES.active = False
    assert _WRITES.seen == []
    assert list(tmp_path.iterdir()) == []
