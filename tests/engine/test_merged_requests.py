"""score_many: requests merged into shared forward passes score exactly as they do alone."""

from __future__ import annotations

import numpy as np
import pytest

from cbpt.server.adapters.cbp import CustomizedBlackBoxPrompt
from cbpt.server.engine import ScoreRequest, ScoringEngine, ScoringMode
from cbpt.server.errors import InvalidRequest, UnknownAdapter
from cbpt.server.runtime import default_adapters
from cbpt.server.testing import tiny_bundle, tiny_generator

TEXTS = [
    "Tweet: fine",
    "Tweet: a much longer tweet that needs padding in a batch",
    "Tweet: bad",
    "x",
    "ok then",
]
CUE = "\nSentiment:"


@pytest.fixture(scope="module")
def engine() -> ScoringEngine:
    bundle = tiny_bundle(3)
    adapters = default_adapters(bundle, bbt_dimension=8, prompt_length=3)
    adapters.append(CustomizedBlackBoxPrompt(tiny_generator(bundle, dimension=8, prompt_length=3)))
    return ScoringEngine(bundle, adapters, batch_sequences=7)


def _requests(adapter: str, mode: ScoringMode = ScoringMode.FIRST_TOKEN) -> list[ScoreRequest]:
    rng = np.random.default_rng(len(adapter))
    dimension = 0 if adapter == "none" else 8
    return [
        ScoreRequest(adapter, rng.standard_normal((3, dimension)).astype(np.float32), TEXTS[:3],
                     [" yes", " no"], mode, CUE, scope="alice"),
        ScoreRequest(adapter, rng.standard_normal((1, dimension)).astype(np.float32), TEXTS[2:],
                     [[" a", " b", " c"], [" b"], [" c", " maybe not"]], mode, CUE, scope="bob"),
        ScoreRequest(adapter, rng.standard_normal((2, dimension)).astype(np.float32), TEXTS,
                     [" positive", " negative", " neutral"], mode, CUE, scope="alice"),
    ]  # fmt: skip


@pytest.mark.parametrize("adapter", ["none", "bbt", "bbt-suffix", "bbt-cue", "cbp"])
@pytest.mark.parametrize("mode", [ScoringMode.FIRST_TOKEN, ScoringMode.FULL_CHOICE])
def test_merged_scores_equal_unmerged(engine, adapter, mode):
    requests = _requests(adapter, mode)
    if mode is ScoringMode.FIRST_TOKEN:  # " maybe not" shares no first token with " c" only in full mode
        requests[1] = ScoreRequest(
            adapter, requests[1].candidates, TEXTS[2:], [" a", " b"], mode, CUE, scope="bob"
        )
    alone = [engine.score(request) for request in requests]
    merged = engine.score_many(requests)
    for single, together in zip(alone, merged, strict=True):
        assert not isinstance(together, Exception)
        assert together.log_probs.shape == single.log_probs.shape
        assert together.choice_counts == single.choice_counts
        np.testing.assert_allclose(together.log_probs, single.log_probs, atol=1e-4)


def test_a_bad_request_fails_alone_and_different_cues_are_grouped_apart(engine):
    good = _requests("bbt-suffix")
    other_cue = ScoreRequest("bbt-cue", good[0].candidates, TEXTS[:2], [" yes", " no"], cue="\nAnswer:")
    wrong_length = ScoreRequest("bbt", np.zeros((1, 5), np.float32), TEXTS[:1], [" yes", " no"])
    unknown = ScoreRequest("nope", np.zeros((1, 8), np.float32), TEXTS[:1], [" yes", " no"])
    outcomes = engine.score_many([good[0], wrong_length, other_cue, unknown, good[2]])
    assert isinstance(outcomes[1], InvalidRequest) and outcomes[1].field == "dimension"
    assert isinstance(outcomes[3], UnknownAdapter)
    for index, request in ((0, good[0]), (2, other_cue), (4, good[2])):
        np.testing.assert_allclose(outcomes[index].log_probs, engine.score(request).log_probs, atol=1e-4)
