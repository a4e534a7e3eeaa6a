"""Batching must not change results: every score equals scoring that example alone."""

from __future__ import annotations

import numpy as np
import pytest

from cbpt.server.adapters.bbt import BlackBoxTuning
from cbpt.server.adapters.none import NoPrompt
from cbpt.server.engine import ScoreRequest, ScoringEngine, ScoringMode
from cbpt.server.testing import tiny_bundle

TEXTS = [
    "Review: great movie\nSentiment:",
    "Review: bad\nSentiment:",
    "Review: a much longer review that forces padding of the shorter ones in a batch\nSentiment:",
    "x",
]
CHOICES = [" positive", " negative", " neutral"]


def _alone(engine, adapter, candidates, mode=ScoringMode.FIRST_TOKEN, choices=None):
    choices = choices or [CHOICES] * len(TEXTS)
    out = np.full((len(candidates), len(TEXTS), max(len(c) for c in choices)), -np.inf, dtype=np.float32)
    for i in range(len(candidates)):
        for j, text in enumerate(TEXTS):
            result = engine.score(ScoreRequest(adapter, candidates[i : i + 1], [text], [choices[j]], mode))
            out[i, j, : len(choices[j])] = result.log_probs[0, 0, : len(choices[j])]
    return out


@pytest.mark.parametrize("adapter", ["bbt", "cbp"])
@pytest.mark.parametrize("mode", [ScoringMode.FIRST_TOKEN, ScoringMode.FULL_CHOICE])
def test_batched_scores_equal_single_example_scores(tiny, adapter, mode):
    candidates = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    batched = tiny.score(ScoreRequest(adapter, candidates, TEXTS, CHOICES, mode)).log_probs
    np.testing.assert_allclose(batched, _alone(tiny, adapter, candidates, mode), atol=1e-4)


def test_ragged_choices_pad_with_minus_inf_and_normalise(tiny):
    choices = [[" yes", " no"], [" a", " b", " c"], [" x"], [" yes", " maybe"]]
    candidates = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)
    result = tiny.score(ScoreRequest("bbt", candidates, TEXTS, choices, ScoringMode.FULL_CHOICE))
    assert result.choice_counts == (2, 3, 1, 2)
    assert np.isneginf(result.log_probs[:, 0, 2]).all()
    np.testing.assert_allclose(np.exp(result.log_probs).sum(-1), 1.0, atol=1e-5)
    alone = _alone(tiny, "bbt", candidates, ScoringMode.FULL_CHOICE, choices)
    np.testing.assert_allclose(result.log_probs, alone, atol=1e-4)


@pytest.mark.parametrize("batch_sequences", [1, 3, 64])
def test_chunk_size_does_not_change_scores(batch_sequences):
    bundle = tiny_bundle(0)
    adapters = [
        NoPrompt(),
        BlackBoxTuning(bundle.hidden_size, bundle.embedding_std, dimension=8, prompt_length=2),
    ]
    reference = ScoringEngine(bundle, adapters, batch_sequences=1000)
    engine = ScoringEngine(bundle, adapters, batch_sequences=batch_sequences)
    candidates = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)
    request = ScoreRequest("bbt", candidates, TEXTS, CHOICES)
    np.testing.assert_allclose(engine.score(request).log_probs, reference.score(request).log_probs, atol=1e-5)


def test_bos_tokenizer_keeps_bos_first_and_padding_invariant():
    bundle = tiny_bundle(0, bos=True)
    engine = ScoringEngine(
        bundle, [BlackBoxTuning(bundle.hidden_size, bundle.embedding_std, dimension=8, prompt_length=2)]
    )
    assert engine.parts.bos == (bundle.tokenizer.bos_token_id,)
    candidates = np.random.default_rng(4).standard_normal((2, 8)).astype(np.float32)
    batched = engine.score(ScoreRequest("bbt", candidates, TEXTS, CHOICES)).log_probs
    np.testing.assert_allclose(batched, _alone(engine, "bbt", candidates), atol=1e-4)


def test_candidates_change_scores_and_zero_shot_ignores_them(tiny):
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((2, 1, 16)).astype(np.float32) * 3
    score_a = tiny.score(ScoreRequest("bbt", a, TEXTS, CHOICES)).log_probs
    score_b = tiny.score(ScoreRequest("bbt", b, TEXTS, CHOICES)).log_probs
    assert np.abs(score_a - score_b).max() > 1e-3
    none = tiny.score(ScoreRequest("none", np.zeros((2, 0), np.float32), TEXTS, CHOICES)).log_probs
    np.testing.assert_array_equal(none[0], none[1])


def test_tokens_processed_counts_prompts_and_texts(tiny):
    """bbt's prefix runs once per candidate (its keys and values are reused); cbp's once per example."""
    text_tokens = sum(len(tiny.bundle.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS[:2])
    bbt = tiny.score(ScoreRequest("bbt", np.zeros((2, 16), np.float32), TEXTS[:2], CHOICES))
    assert bbt.tokens_processed == 2 * (text_tokens + 4)
    cbp = tiny.score(ScoreRequest("cbp", np.zeros((2, 16), np.float32), TEXTS[:2], CHOICES))
    assert cbp.tokens_processed == 2 * (text_tokens + 2 * 4)


def test_unsorted_chunks_give_the_same_scores():
    bundle = tiny_bundle(0)
    adapters = [BlackBoxTuning(bundle.hidden_size, bundle.embedding_std, dimension=8, prompt_length=2)]
    candidates = np.random.default_rng(6).standard_normal((3, 8)).astype(np.float32)
    request = ScoreRequest("bbt", candidates, TEXTS, CHOICES)
    sorted_scores = ScoringEngine(bundle, adapters, batch_sequences=5).score(request).log_probs
    unsorted = (
        ScoringEngine(bundle, adapters, batch_sequences=5, sort_by_length=False).score(request).log_probs
    )
    np.testing.assert_allclose(sorted_scores, unsorted, atol=1e-5)
