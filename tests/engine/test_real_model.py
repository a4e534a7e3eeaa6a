"""The bundled SmolLM2: conversion cache, fingerprint, and sane sentiment scores."""

from __future__ import annotations

import numpy as np
import pytest

from cbpt.server.engine import ScoreRequest

pytestmark = pytest.mark.integration


def test_bundled_model_identity(real_engine):
    info = real_engine.info()
    assert info.hidden_size == 576
    assert len(info.fingerprint) == 64
    assert [a.name for a in info.adapters][:4] == ["none", "bbt", "bbt-suffix", "bbt-cue"]
    assert info.adapters[1].dimension == 500 and info.adapters[1].prompt_length == 10


def test_sentiment_choices_are_single_tokens_with_finite_normalised_log_probs(real_engine):
    tokenizer = real_engine.bundle.tokenizer
    assert tokenizer(" negative", add_special_tokens=False)["input_ids"] == [3524]
    assert tokenizer(" positive", add_special_tokens=False)["input_ids"] == [2731]
    texts = ["Review: an utterly delightful film.\nSentiment:", "Review: a boring, painful mess.\nSentiment:"]
    candidates = np.random.default_rng(0).standard_normal((2, 500)).astype(np.float32)
    result = real_engine.score(ScoreRequest("bbt", candidates, texts, [" negative", " positive"]))
    assert np.isfinite(result.log_probs).all()
    np.testing.assert_allclose(np.exp(result.log_probs).sum(-1), 1.0, atol=1e-5)
    zero_shot = real_engine.score(
        ScoreRequest("none", np.zeros((1, 0), np.float32), texts, [" negative", " positive"])
    )
    assert zero_shot.log_probs[0, 0].argmax() == 1 and zero_shot.log_probs[0, 1].argmax() == 0


def test_real_model_padding_invariance(real_engine):
    texts = [
        "Tweet: ok\nSentiment:",
        "Tweet: this is a considerably longer tweet about cars and phones\nSentiment:",
    ]
    choices = [" negative", " neutral", " positive"]
    candidates = np.random.default_rng(1).standard_normal((2, 500)).astype(np.float32)
    batched = real_engine.score(ScoreRequest("bbt", candidates, texts, choices)).log_probs
    for i in range(2):
        for j, text in enumerate(texts):
            alone = real_engine.score(ScoreRequest("bbt", candidates[i : i + 1], [text], choices)).log_probs
            np.testing.assert_allclose(batched[i, j], alone[0, 0], atol=1e-4)


@pytest.mark.parametrize("adapter", ["none", "bbt-cue", "cbp-opinion", "bbt-suffix"])
def test_scores_equal_the_engine_before_issue_24(real_engine, adapter):
    """Issue #24 changed how rows are batched, never what is computed: the served paths score as the
    engine before it did, within float32 rounding (1e-5, absolute and relative: the old engine itself
    moved bbt-suffix by 1.3e-5 between passes of 1 and of 64 rows, and both are about 4e-6 from a
    float64 run)."""
    from cbpt.server.engine import ScoringEngine
    from cbpt.server.engine.batching import Batching

    if adapter not in real_engine.adapters:
        pytest.skip(f"{adapter} is not served on this model")
    texts = [
        "Tweet: ok",
        "Tweet: this is a considerably longer tweet about cars and phones and the weather today",
        "Tweet: the service was slow but the food made up for it",
        "Tweet: no",
    ]
    dimension = real_engine.adapters[adapter].dimension
    candidates = (
        np.random.default_rng(0).standard_normal((3 if dimension else 1, dimension)).astype(np.float32)
    )
    request = ScoreRequest(
        adapter, candidates, texts, [" negative", " neutral", " positive"], cue="\nSentiment:"
    )
    before = ScoringEngine(
        real_engine.bundle, list(real_engine.adapters.values()), batching=Batching.before_issue_24()
    )
    expected = before.score(request).log_probs
    now = ScoringEngine(real_engine.bundle, list(real_engine.adapters.values()))
    for _ in range(2):  # texts encoded with their rows, then from the cache
        np.testing.assert_allclose(now.score(request).log_probs, expected, rtol=1e-5, atol=1e-5)
