"""Before-cue placement: reusing each text's keys and values equals recomputing everything."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbpt.server.adapters import Placement
from cbpt.server.adapters.bbt import BlackBoxTuning
from cbpt.server.engine import ScoreRequest, ScoringEngine, ScoringMode
from cbpt.server.engine.kv import KVState, TextStateCache
from cbpt.server.testing import tiny_bundle

TEXTS = ["Tweet: fine", "Tweet: a much longer tweet that needs padding in a batch", "Tweet: bad", "x"]
CHOICES = [" positive", " negative", " neutral"]


def _engine(bos: bool = False, **options) -> ScoringEngine:
    bundle = tiny_bundle(0, bos=bos)
    adapter = BlackBoxTuning(
        bundle.hidden_size,
        bundle.embedding_std,
        name="cue",
        dimension=8,
        prompt_length=3,
        placement=Placement.BEFORE_CUE,
    )
    return ScoringEngine(bundle, [adapter], **options)


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("mode", [ScoringMode.FIRST_TOKEN, ScoringMode.FULL_CHOICE])
def test_reused_text_states_equal_the_uncached_path(bos, mode):
    candidates = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32) * 2
    choices = CHOICES if mode is ScoringMode.FIRST_TOKEN else [" yes", " no way", " maybe not at all"]
    request = ScoreRequest("cue", candidates, TEXTS, choices, mode, cue="\nSentiment:")
    cached = _engine(bos, batch_sequences=4).score(request)
    uncached = _engine(bos, reuse_text_states=False).score(request)
    np.testing.assert_allclose(cached.log_probs, uncached.log_probs, atol=1e-4)
    assert cached.tokens_processed < uncached.tokens_processed


def test_uncached_before_cue_path_equals_single_sequences():
    engine = _engine(reuse_text_states=False)
    candidates = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    batched = engine.score(ScoreRequest("cue", candidates, TEXTS, CHOICES, cue="\nAnswer:")).log_probs
    for i in range(2):
        for j, text in enumerate(TEXTS):
            alone = engine.score(ScoreRequest("cue", candidates[i : i + 1], [text], CHOICES, cue="\nAnswer:"))
            np.testing.assert_allclose(batched[i, j], alone.log_probs[0, 0], atol=1e-4)


def test_second_request_reuses_states_and_gives_same_scores():
    engine = _engine()
    candidates = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    request = ScoreRequest("cue", candidates, TEXTS, CHOICES, cue="\nSentiment:", scope="alice")
    first = engine.score(request)
    assert engine.text_states.scope_entries("alice") == len(TEXTS)
    second = engine.score(request)
    np.testing.assert_allclose(first.log_probs, second.log_probs, atol=1e-6)
    assert second.tokens_processed < first.tokens_processed  # the texts were not run again


def test_scopes_never_share_entries():
    engine = _engine()
    request = ScoreRequest("cue", np.zeros((1, 8), np.float32), TEXTS[:2], CHOICES, cue="\nS:", scope="alice")
    engine.score(request)
    assert engine.text_states.scope_entries("alice") == 2
    assert engine.text_states.scope_entries("bob") == 0
    for text in TEXTS[:2]:
        tokens = tuple(engine.bundle.tokenizer(text, add_special_tokens=False)["input_ids"])
        assert engine.text_states.get("bob", tokens) is None
        assert engine.text_states.get("alice", tokens) is not None
    engine.text_states.drop("alice")
    assert engine.text_states.scope_entries("alice") == 0 and engine.text_states.scope_bytes("alice") == 0


def _state(length: int) -> KVState:
    import torch

    return KVState(((torch.zeros(2, length, 4), torch.zeros(2, length, 4)),))


def test_cache_never_grows_past_its_bound():
    entry = _state(10).nbytes
    cache = TextStateCache(max_bytes_per_scope=3 * entry, max_scopes=2)
    for index in range(10):
        cache.put("alice", (index,), _state(10))
        assert cache.scope_bytes("alice") <= 3 * entry
    assert cache.scope_entries("alice") == 3
    assert cache.get("alice", (0,)) is None and cache.get("alice", (9,)) is not None
    cache.put("bob", (1,), _state(10))
    cache.put("carol", (1,), _state(10))  # a third scope evicts the least recently used one
    assert cache.scope_entries("alice") == 0 and cache.scope_entries("carol") == 1
    cache.put("dave", (1,), _state(1000))  # larger than a whole scope's budget: not cached
    assert cache.scope_entries("dave") == 0


def test_engine_cache_respects_a_tiny_budget():
    engine = _engine(text_states=TextStateCache(max_bytes_per_scope=1, max_scopes=1))
    request = ScoreRequest("cue", np.zeros((2, 8), np.float32), TEXTS, CHOICES, cue="\nS:", scope="alice")
    reference = _engine(reuse_text_states=False).score(request).log_probs
    np.testing.assert_allclose(engine.score(request).log_probs, reference, atol=1e-4)
    assert engine.text_states.scope_bytes("alice") == 0


def _on_cue_engine(**options) -> ScoringEngine:
    from cbpt.server.adapters.none import NoPrompt

    bundle = tiny_bundle(0)
    adapter = BlackBoxTuning(
        bundle.hidden_size,
        bundle.embedding_std,
        name="on-cue",
        dimension=8,
        prompt_length=2,
        placement=Placement.ON_CUE,
    )
    return ScoringEngine(bundle, [NoPrompt(), adapter], **options)


def test_on_cue_at_z_zero_is_exactly_zero_shot():
    engine = _on_cue_engine()
    zero = engine.score(
        ScoreRequest("on-cue", np.zeros((2, 8), np.float32), TEXTS, CHOICES, cue="\nSentiment:")
    )
    none = engine.score(
        ScoreRequest("none", np.zeros((1, 0), np.float32), TEXTS, CHOICES, cue="\nSentiment:")
    )
    np.testing.assert_allclose(zero.log_probs[0], none.log_probs[0], atol=1e-5)
    moved = engine.score(
        ScoreRequest("on-cue", np.ones((1, 8), np.float32) * 3, TEXTS, CHOICES, cue="\nSentiment:")
    )
    assert np.abs(moved.log_probs[0] - none.log_probs[0]).max() > 1e-3


@pytest.mark.parametrize("mode", [ScoringMode.FIRST_TOKEN, ScoringMode.FULL_CHOICE])
@pytest.mark.parametrize("cue", ["\nSentiment:", ":"])  # a cue shorter than the prompt perturbs all of it
def test_on_cue_reuse_equals_uncached_and_single_sequences(mode, cue):
    candidates = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)
    choices = CHOICES if mode is ScoringMode.FIRST_TOKEN else [" yes", " no way"]
    request = ScoreRequest("on-cue", candidates, TEXTS, choices, mode, cue=cue)
    cached = _on_cue_engine(batch_sequences=4).score(request).log_probs
    uncached_engine = _on_cue_engine(reuse_text_states=False)
    np.testing.assert_allclose(cached, uncached_engine.score(request).log_probs, atol=1e-4)
    for i in range(3):
        for j, text in enumerate(TEXTS):
            alone = uncached_engine.score(
                ScoreRequest("on-cue", candidates[i : i + 1], [text], choices, mode, cue=cue)
            )
            np.testing.assert_allclose(cached[i, j], alone.log_probs[0, 0], atol=1e-4)


def _state(nbytes: int) -> KVState:
    """A one-layer state of exactly ``nbytes`` (keys and values of float32)."""
    half = torch.zeros(1, nbytes // 8, 1)
    return KVState(((half, half.clone()),))


def test_the_cache_is_bounded_in_total_across_keys_largest_key_first() -> None:
    """Finding 9: the bound was 256 MB per key and 8 keys (2 GB), not configurable nor global."""
    cache = TextStateCache(max_bytes_per_scope=4000, max_scopes=8, max_bytes=1000)
    for key, entries in (("alice", 5), ("bob", 3), ("carol", 3)):
        for i in range(entries):
            cache.put(key, (i,), _state(80))
    assert cache.total_bytes == 880
    cache.put("alice", (9,), _state(160))  # 1040 in total: over the bound
    assert cache.total_bytes == 960
    assert cache.scope_bytes("bob") == cache.scope_bytes("carol") == 240  # the heavy key paid
    assert cache.scope_bytes("alice") == 480 and cache.get("alice", (0,)) is None
    assert cache.get("alice", (9,)) is not None
    cache.drop("bob")
    assert cache.total_bytes == 720


def test_an_entry_larger_than_any_bound_is_not_kept() -> None:
    cache = TextStateCache(max_bytes_per_scope=1000, max_bytes=100)
    cache.put("alice", (1,), _state(200))
    assert cache.total_bytes == 0
