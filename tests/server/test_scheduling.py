"""Fair scheduling and abandoned work, through a real loopback server with API keys.

The tiny model is slowed down (a forward hook sleeps) and runs one row per chunk, so a "large"
call takes well over a hundred forward passes; the hook also counts passes, which is how the tests
see whether the engine kept working, without timing anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from cbpt.common.wire import unpack_floats
from cbpt.server.engine import ScoringEngine
from cbpt.server.front.app import serve_in_background
from cbpt.server.front.keys import add_key
from cbpt.v1 import tuning_pb2_grpc
from tests.server.helpers import (
    CountingModel,
    GatedEngine,
    candidates,
    evaluate_request,
    plain_settings,
    serde_request,
)

TEXTS = [f"Review: film number {i} was fine\nSentiment:" for i in range(16)]
BIG = evaluate_request(candidates(8, seed=7), texts=TEXTS)  # 8 prefixes + 128 rows: 136 passes
SMALL = evaluate_request(candidates(1, seed=8), texts=TEXTS[:1])  # 2 passes


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[tuple[str, str]]]]:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    names = ("alice", "bob")
    return path, {name: [("authorization", f"Bearer {add_key(path, name)}")] for name in names}


@pytest.fixture(scope="module")
def stub(slow_engine: ScoringEngine, keys) -> Iterator[tuning_pb2_grpc.TuningStub]:
    settings = plain_settings(api_keys_file=keys[0], merge_window_ms=0)
    with serve_in_background(slow_engine, settings) as target, grpc.insecure_channel(target) as channel:
        yield tuning_pb2_grpc.TuningStub(channel)


def _abandoned(caplog: pytest.LogCaptureFixture, timeout: float = 30) -> logging.LogRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in caplog.records:
            if record.getMessage() == "evaluate abandoned":
                return record
        time.sleep(0.02)
    raise AssertionError("no 'evaluate abandoned' line was logged")


def _key_id(record: logging.LogRecord) -> str | None:
    from cbpt.server.logs import safe_fields

    return safe_fields(record).get("key_id")  # type: ignore[return-value]


@pytest.mark.parametrize("how", ["cancelled", "deadline"])
def test_an_abandoned_call_stops_at_the_next_chunk_and_is_logged(
    stub, keys, passes: CountingModel, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """Finding 1: before, the abandoned call ran all its 136 passes before alice's next call."""
    caplog.set_level(logging.INFO)
    alice = keys[1]["alice"]
    big = stub.Evaluate.future(BIG, metadata=alice, timeout=60 if how == "cancelled" else 0.6)
    passes.wait_for(5)
    if how == "cancelled":
        big.cancel()
    with pytest.raises(grpc.FutureCancelledError if how == "cancelled" else grpc.RpcError):
        big.result()
    record = _abandoned(caplog)
    assert (record.reason, record.stage, _key_id(record)) == (how, "running", "alice")  # type: ignore[attr-defined]
    # Alice's next call waits until her previous job is gone: it ends at once when that job stopped.
    assert stub.Evaluate(SMALL, metadata=alice, timeout=60).num_candidates == 1
    assert passes.count < 100, passes.count


def test_a_queued_call_that_is_cancelled_never_runs(
    engine: ScoringEngine, keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gated = GatedEngine(engine)
    alice = keys[1]["alice"]
    settings = plain_settings(api_keys_file=keys[0])
    with (
        serve_in_background(gated, settings) as target,  # type: ignore[arg-type]
        grpc.insecure_channel(target) as channel,
    ):
        stub = tuning_pb2_grpc.TuningStub(channel)
        running = stub.Evaluate.future(evaluate_request(), metadata=alice, timeout=30)
        assert gated.entered.wait(10)
        queued = stub.Evaluate.future(evaluate_request(), metadata=alice, timeout=30)  # waits for alice's job
        time.sleep(0.2)
        queued.cancel()
        record = _abandoned(caplog)
        assert (record.reason, record.stage, _key_id(record)) == ("cancelled", "queued", "alice")  # type: ignore[attr-defined]
        gated.release.set()
        assert running.result().num_candidates == 2
        assert stub.Evaluate(evaluate_request(), metadata=alice, timeout=30).num_candidates == 2
    assert gated.calls == [1, 1]  # the cancelled call never became a job


def test_a_large_call_is_interleaved_with_another_keys_small_one(
    stub, keys, slow_engine: ScoringEngine, passes: CountingModel
) -> None:
    """Finding 2: before, bob's small call waited until alice's 136 passes were done."""
    alone = slow_engine.score(serde_request(BIG, scope="alice")).log_probs
    started = passes.count
    big = stub.Evaluate.future(BIG, metadata=keys[1]["alice"], timeout=120)
    passes.wait_for(started + 3)
    small = stub.Evaluate(SMALL, metadata=keys[1]["bob"], timeout=120)
    assert small.num_candidates == 1
    assert not big.done(), "bob's call waited for alice's to finish"
    assert passes.count - started < 100
    response = big.result()
    scores = unpack_floats(response.log_probs, (8, 16, 2), "log_probs")
    np.testing.assert_array_equal(scores, alone)  # interleaving does not change a single number
