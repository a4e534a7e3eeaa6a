"""CountTokens: the engine's own token counts of texts, validated like Evaluate's, with no scoring and no
text logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.engine import jobs as engine_jobs
from cbpt.server.front.app import serve_in_background
from cbpt.server.front.keys import add_key
from cbpt.server.scheduling.merging import MergeSettings
from cbpt.server.scheduling.scheduler import Scheduler
from cbpt.server.testing import tiny_engine
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import TEST_LIMITS, call_fails, full_queue, plain_settings

TEXTS = ["Review: a gripping, funny and moving film", "so dull", "Answer:"]


def _count(stub: tuning_pb2_grpc.TuningStub, texts: list[str]) -> list[int]:
    return list(stub.CountTokens(tuning_pb2.CountTokensRequest(texts=texts), timeout=20).counts)


def test_counts_are_the_tokens_evaluate_would_run(
    stub: tuning_pb2_grpc.TuningStub, engine: ScoringEngine
) -> None:
    tokenizer = engine.bundle.tokenizer
    expected = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in TEXTS]
    assert _count(stub, TEXTS) == expected
    long_text = "word " * 50  # more tokens than max_text_tokens (48): counted, not refused
    assert _count(stub, [long_text])[0] > TEST_LIMITS.max_text_tokens


@pytest.mark.parametrize(
    ("texts", "field", "fragment"),
    [
        ([], "texts", "at least one text"),
        (["a"] * (TEST_LIMITS.max_examples + 1), "texts", "exceed the limit"),
        (["fine", " "], "texts[1]", "empty text"),
        (["x" * (TEST_LIMITS.max_text_chars + 1)], "texts[0]", "characters exceed the limit"),
    ],
)
def test_invalid_requests_name_the_field(stub: tuning_pb2_grpc.TuningStub, texts, field, fragment) -> None:
    failed = call_fails(stub.CountTokens, tuning_pb2.CountTokensRequest(texts=texts))
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    (name, description), *_ = failed.field_violations
    assert name == field and fragment in description


def test_an_api_key_is_required_and_no_text_is_logged(
    engine: ScoringEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys.json"
    key = add_key(keys, "alice")
    with (
        serve_in_background(engine, plain_settings(api_keys_file=keys)) as target,
        grpc.insecure_channel(target) as channel,
    ):
        stub = tuning_pb2_grpc.TuningStub(channel)
        refused = call_fails(stub.CountTokens, tuning_pb2.CountTokensRequest(texts=TEXTS))
        assert refused.code == grpc.StatusCode.UNAUTHENTICATED
        with caplog.at_level(logging.DEBUG):
            response = stub.CountTokens(
                tuning_pb2.CountTokensRequest(texts=["Zebulon owes me money"]),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=20,
            )
    assert len(response.counts) == 1
    assert "count tokens" in caplog.text and "Zebulon" not in caplog.text


class _StepLog:
    """The engine as the scheduler sees it, noting whose job ran each step (the real jobs run them)."""

    def __init__(self, engine: ScoringEngine) -> None:
        self._engine = engine
        self.steps: list[str] = []

    def job(self, requests: Sequence[ScoreRequest]) -> Any:
        return _Logged(self._engine.job(requests), "score", self.steps)

    def count_job(self, texts: Sequence[str]) -> Any:
        return _Logged(self._engine.count_job(texts), "count", self.steps)


class _Logged:
    def __init__(self, job: Any, kind: str, steps: list[str]) -> None:
        self._job, self._kind, self._steps = job, kind, steps

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def step(self) -> bool:
        more = self._job.step()
        if more:
            self._steps.append(self._kind)
        return bool(more)


def test_counting_takes_turns_with_another_tenants_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 5 of #22: CountTokens ran straight on the engine thread, outside the scheduler's turns
    (512 texts of 4,096 characters held it 1.7 s). Now it is a job of steps like any other."""
    monkeypatch.setattr(engine_jobs, "COUNT_STEP_CHARS", 1)  # one text a step
    engine = tiny_engine(limits=TEST_LIMITS, bbt_dimension=16, with_cbp=False, batch_sequences=1)
    texts = [f"Review: film {i} was fine" for i in range(6)]
    request = ScoreRequest("bbt", np.zeros((4, 16), np.float32), texts, [" yes", " no"])
    logged = _StepLog(engine)

    async def run() -> tuple[Any, list[int]]:
        with ThreadPoolExecutor(1) as executor:
            scheduler = Scheduler(logged, executor, MergeSettings(merge_window_ms=50, max_queued_requests=8))  # type: ignore[arg-type]
            scored, counts = await asyncio.gather(
                scheduler.score(request, "alice"), scheduler.count(texts, "bob")
            )
            await scheduler.close()
            return scored, counts

    scored, counts = asyncio.run(run())
    assert counts == engine.count_tokens(texts)
    np.testing.assert_allclose(scored.log_probs, engine.score(request).log_probs, atol=1e-6)
    assert logged.steps.count("count") == len(texts) and logged.steps.count("score") > len(texts)
    first, last = logged.steps.index("count"), len(logged.steps) - 1 - logged.steps[::-1].index("count")
    assert "score" in logged.steps[first:last]  # interleaved: scoring ran between the counting steps


def test_counting_waits_in_the_bounded_queue_like_scoring(engine: ScoringEngine) -> None:
    """Finding 5 of #22: with the engine busy and the queue full, CountTokens was still run (behind
    everything, unbounded); now it takes a queue place like any call, and is refused when there is none."""
    with full_queue(engine, queued=lambda stub: _count(stub, TEXTS)) as full:
        refused = call_fails(full.stub.CountTokens, tuning_pb2.CountTokensRequest(texts=TEXTS))
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in refused.message
    assert full.running.result().num_candidates == 2 and full.queued.result() == engine.count_tokens(TEXTS)


def test_a_keys_rate_and_concurrency_limits_apply_to_counting(engine: ScoringEngine, tmp_path: Path) -> None:
    """CountTokens is one request against the key's rate limit (it is not charged to the evaluation
    budget: nothing is scored), and counts towards the key's concurrent calls."""
    keys = tmp_path / "keys.json"
    key = add_key(keys, "alice", requests_per_minute=1)
    metadata = (("authorization", f"Bearer {key}"),)
    with (
        serve_in_background(engine, plain_settings(api_keys_file=keys)) as target,
        grpc.insecure_channel(target) as channel,
    ):
        stub = tuning_pb2_grpc.TuningStub(channel)
        request = tuning_pb2.CountTokensRequest(texts=TEXTS)
        assert len(stub.CountTokens(request, metadata=metadata, timeout=20).counts) == len(TEXTS)
        limited = call_fails(stub.CountTokens, request, metadata=metadata)
    assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in limited.message
