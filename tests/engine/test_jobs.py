"""Jobs: score_many one forward pass per step, interleavable, and stoppable between chunks."""

from __future__ import annotations

import numpy as np
import pytest

from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.errors import CallCancelled, InvalidRequest
from cbpt.server.testing import tiny_bundle

TEXTS = ["Tweet: fine", "Tweet: a much longer tweet that needs padding", "Tweet: bad", "x", "ok then"]
CUE = "\nSentiment:"


@pytest.fixture(scope="module")
def engine() -> ScoringEngine:
    bundle = tiny_bundle(1)
    return ScoringEngine(
        bundle,
        ServedAdapters(bbt_dimension=8, prompt_length=3, shipped_generators=False).build(bundle),
        batch_sequences=2,
    )


def _request(adapter: str, candidates: int, seed: int, scope: str = "a") -> ScoreRequest:
    z = np.random.default_rng(seed).standard_normal((candidates, 8)).astype(np.float32)
    return ScoreRequest(adapter, z, TEXTS, [" yes", " no"], cue=CUE, scope=scope)


@pytest.mark.parametrize("adapter", ["bbt", "bbt-suffix", "bbt-cue"])
def test_interleaved_jobs_score_bit_for_bit_as_alone(engine: ScoringEngine, adapter: str) -> None:
    first, second = _request(adapter, 3, 0), _request(adapter, 2, 1, scope="b")
    engine.text_states.drop("a")  # texts a cache holds run another (packed) way: start both runs cold
    engine.text_states.drop("b")
    alone = [engine.score(first).log_probs, engine.score(second).log_probs]
    engine.text_states.drop("a")
    engine.text_states.drop("b")
    jobs = [engine.job([first]), engine.job([second])]
    steps = [0, 0]
    active = [True, True]
    while any(active):  # strict alternation, one forward pass each
        for index, job in enumerate(jobs):
            if active[index]:
                active[index] = job.step()
                steps[index] += active[index]
    assert min(steps) > 1  # both really were cut into several passes
    for job, expected in zip(jobs, alone, strict=True):
        (outcome,) = job.outcomes()
        assert not isinstance(outcome, Exception)
        np.testing.assert_array_equal(outcome.log_probs, expected)


def test_a_cancelled_job_stops_at_the_next_step(engine: ScoringEngine) -> None:
    job = engine.job([_request("bbt", 4, 2)])  # 4 candidates x 5 texts in chunks of 2: 10+ passes
    for _ in range(3):
        assert job.step()
    job.cancel(0)
    assert job.step() is False  # no further forward pass
    assert job.steps_done == 3
    (outcome,) = job.outcomes()
    assert isinstance(outcome, CallCancelled)


def test_a_cancelled_member_of_a_merged_job_leaves_the_others_scored(engine: ScoringEngine) -> None:
    keep, drop = _request("bbt-cue", 2, 3), _request("bbt-cue", 3, 4)
    expected = engine.score(keep).log_probs
    job = engine.job([drop, keep])
    assert job.step()
    job.cancel(0)
    while job.step():
        pass
    dropped, kept = job.outcomes()
    assert isinstance(dropped, CallCancelled)
    assert not isinstance(kept, Exception)
    np.testing.assert_allclose(kept.log_probs, expected, atol=1e-4)
    assert job.sequences_done < (2 + 3) * len(TEXTS)  # the dropped rows were not all run


def test_score_many_asks_stop_before_every_pass(engine: ScoringEngine) -> None:
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 2

    bad = ScoreRequest("bbt", np.zeros((1, 8), np.float32), TEXTS, [" yes", " no" * 40])  # a token limit
    good, invalid = engine.score_many([_request("bbt", 4, 5), bad], stop=stop)
    assert isinstance(good, CallCancelled) and isinstance(invalid, InvalidRequest)
    assert len(asked) == 2
