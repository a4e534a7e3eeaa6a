"""Dynamic batching: concurrent Evaluate calls share engine calls and get exactly their own scores."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from cbpt.common.wire import unpack_floats
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.errors import InvalidRequest
from cbpt.server.front.app import serve_in_background
from cbpt.server.scheduling.merging import MergeSettings
from cbpt.server.scheduling.scheduler import Scheduler
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import (
    TEXTS,
    GatedEngine,
    call_fails,
    candidates,
    evaluate_request,
    full_queue,
    plain_settings,
)

REQUESTS = [
    evaluate_request(candidates(2, seed=1)),
    evaluate_request(candidates(1, seed=2), texts=TEXTS[:1]),
    evaluate_request(candidates(3, seed=3), texts=TEXTS[::-1], choices=[" good", " bad", " meh"]),
    evaluate_request(candidates(1, seed=4), adapter="cbp"),
]


def _log_probs(response) -> np.ndarray:
    return unpack_floats(response.log_probs, (len(response.log_probs) // 4,), "log_probs")


def test_concurrent_calls_are_merged_and_equal_unmerged(engine: ScoringEngine) -> None:
    gated = GatedEngine(engine)
    settings = plain_settings(merge_window_ms=50)
    with (
        serve_in_background(gated, settings) as target,  # type: ignore[arg-type]
        grpc.insecure_channel(target) as channel,
    ):
        stub = tuning_pb2_grpc.TuningStub(channel)
        unmerged = []
        gated.release.set()
        for request in REQUESTS:  # one at a time: each engine call carries one request
            unmerged.append(_log_probs(stub.Evaluate(request, timeout=20)))
        assert gated.calls == [1] * len(REQUESTS)
        gated.calls.clear()
        gated.release.clear()
        gated.entered.clear()
        with ThreadPoolExecutor(len(REQUESTS) + 1) as pool:
            blocker = pool.submit(stub.Evaluate, REQUESTS[0], timeout=20)
            assert gated.entered.wait(10)  # the engine is busy: the next calls queue up
            futures = [pool.submit(stub.Evaluate, request, timeout=20) for request in REQUESTS]
            threading.Event().wait(0.5)
            gated.release.set()
            merged = [_log_probs(future.result()) for future in futures]
            blocker.result()
    assert (
        gated.calls[0] == 1 and sum(gated.calls[1:]) == len(REQUESTS) and len(gated.calls) < 1 + len(REQUESTS)
    )
    for alone, together in zip(unmerged, merged, strict=True):
        np.testing.assert_allclose(together, alone, atol=1e-5)


def test_full_queue_is_refused_with_a_retry_delay(engine: ScoringEngine) -> None:
    def second(stub: tuning_pb2_grpc.TuningStub) -> tuning_pb2.EvaluateResponse:
        return stub.Evaluate(REQUESTS[1], timeout=20)

    with full_queue(engine, running=REQUESTS[0], queued=second) as full:
        refused = call_fails(full.stub.Evaluate, REQUESTS[2])
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "busy" in refused.message and refused.retry_seconds is not None
        full.gated.release.set()
        assert full.running.result().num_candidates == 2 and full.queued.result().num_candidates == 1
        assert full.stub.Evaluate(REQUESTS[2], timeout=20).num_candidates == 3  # and it keeps serving


def _score_requests(count: int) -> list[ScoreRequest]:
    z = np.random.default_rng(0).standard_normal((count, 16)).astype(np.float32)
    return [ScoreRequest("bbt", z[i : i + 1], TEXTS, [" yes", " no"]) for i in range(count)]


@pytest.mark.parametrize(("max_sequences", "expected_calls"), [(4096, 1), (4, 2), (1, 4)])
def test_merge_budget_bounds_each_engine_call(engine, max_sequences, expected_calls) -> None:
    gated = GatedEngine(engine)
    gated.release.set()

    async def run() -> list:
        with ThreadPoolExecutor(1) as executor:
            merger = Scheduler(
                gated,
                executor,
                MergeSettings(merge_window_ms=200, merge_max_sequences=max_sequences, max_queued_requests=16),
            )
            results = await asyncio.gather(*(merger.score(r) for r in _score_requests(4)))
            await merger.close()
            return results

    results = asyncio.run(run())
    assert len(gated.calls) == expected_calls
    for result, request in zip(results, _score_requests(4), strict=True):
        np.testing.assert_allclose(result.log_probs, engine.score(request).log_probs, atol=1e-5)


def test_a_bad_request_fails_alone(engine) -> None:
    # Past the door, only a token limit can fail a request: the engine alone counts tokens.
    bad = ScoreRequest("bbt", candidates(1), ["word " * 60], [" yes", " no"])

    async def run() -> list:
        with ThreadPoolExecutor(1) as executor:
            merger = Scheduler(engine, executor, MergeSettings(merge_window_ms=200))
            outcomes = await asyncio.gather(
                *(merger.score(r) for r in [*_score_requests(1), bad]), return_exceptions=True
            )
            await merger.close()
            return outcomes

    good, failed = asyncio.run(run())
    assert isinstance(failed, InvalidRequest) and failed.field == "texts[0]"
    assert good.log_probs.shape == (1, 2, 2)
