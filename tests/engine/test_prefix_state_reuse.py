"""Prefix placement with an input-independent prompt (BBT): each candidate's prompt is encoded once."""

from __future__ import annotations

import numpy as np
import pytest

from cbpt.server.adapters.bbt import BlackBoxTuning
from cbpt.server.engine import ScoreRequest, ScoringEngine, ScoringMode
from cbpt.server.testing import tiny_bundle

TEXTS = ["Review: fine", "Review: a much longer review that needs padding in a batch", "Review: bad", "x"]


def _engine(bos: bool, **options) -> ScoringEngine:
    bundle = tiny_bundle(0, bos=bos)
    adapter = BlackBoxTuning(bundle.hidden_size, bundle.embedding_std, dimension=8, prompt_length=3)
    return ScoringEngine(bundle, [adapter], **options)


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("mode", [ScoringMode.FIRST_TOKEN, ScoringMode.FULL_CHOICE])
def test_reused_prefix_states_equal_the_flat_path(bos, mode):
    candidates = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32) * 2
    choices = [" positive", " negative"] if mode is ScoringMode.FIRST_TOKEN else [" yes", " no way at all"]
    request = ScoreRequest("bbt", candidates, TEXTS, choices, mode, cue="\nSentiment:")
    reused = _engine(bos, batch_sequences=3).score(request)
    flat = _engine(bos, reuse_prefix_states=False).score(request)
    np.testing.assert_allclose(reused.log_probs, flat.log_probs, atol=1e-4)
    # The prompt's tokens run once per candidate rather than once per (candidate, example).
    prefix = 3 + int(bos)
    rows = len(candidates) * len(TEXTS) * (1 if mode is ScoringMode.FIRST_TOKEN else 2)
    assert flat.tokens_processed - reused.tokens_processed == rows * prefix - len(candidates) * prefix


def test_candidates_keep_their_own_prefix():
    engine = _engine(False)
    candidates = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    together = engine.score(ScoreRequest("bbt", candidates, TEXTS, [" a", " b"])).log_probs
    for i in range(3):
        alone = engine.score(ScoreRequest("bbt", candidates[i : i + 1], TEXTS, [" a", " b"])).log_probs
        np.testing.assert_allclose(together[i], alone[0], atol=1e-4)
