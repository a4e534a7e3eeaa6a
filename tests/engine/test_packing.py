"""Packed passes (#24): rows packed after one cached text score as each row alone; texts not cached yet
run at the head of their rows' pass; grouped-query attention equals the model's own; a sliding-window
model (Gemma 3 layout) keeps its windows when packed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cbpt.server.adapters import Placement
from cbpt.server.adapters.bbt import BlackBoxTuning
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoreRequest, ScoringEngine, ScoringMode
from cbpt.server.engine.attention import attention
from cbpt.server.engine.batching import Batching
from cbpt.server.engine.packing import HEAD, PAD, PackedSequence, packed_batches, packed_mask
from cbpt.server.engine.plan import Row
from cbpt.server.model import ModelBundle, prepare_bundle
from cbpt.server.testing import tiny_bundle, tiny_tokenizer

TEXTS = [
    "Tweet: fine",
    "Tweet: a much longer tweet that needs padding in a batch of several",
    "Tweet: bad",
    "x",
    "Review: dull, slow and far too long",
]
CUE = "\nSentiment:"
BEFORE = Batching.before_issue_24()


def _adapter(bundle: ModelBundle, placement: Placement, name: str = "x") -> BlackBoxTuning:
    return BlackBoxTuning(
        bundle.hidden_size, bundle.embedding_std, name=name, dimension=8, prompt_length=3, placement=placement
    )


def _requests(mode: ScoringMode, adapter: str = "x") -> list[ScoreRequest]:
    """Two requests of one key with different popsizes and an overlapping text, as a merged job gets them."""
    choices = (
        [" positive", " negative", " neutral"] if mode is ScoringMode.FIRST_TOKEN else [" yes", " no way"]
    )
    rng = np.random.default_rng(0)
    first = rng.standard_normal((5, 8)).astype(np.float32)
    second = rng.standard_normal((2, 8)).astype(np.float32)
    return [
        ScoreRequest(adapter, first, TEXTS, choices, mode, cue=CUE, scope="a"),
        ScoreRequest(adapter, second, TEXTS[:2], choices, mode, cue=CUE, scope="a"),
    ]


def test_the_mask_lets_each_row_see_the_state_the_head_and_itself_only() -> None:
    segments = torch.tensor([[HEAD, HEAD, 0, 0, 1, 1, PAD], [0, 0, 1, PAD, PAD, PAD, PAD]])
    mask = packed_mask(segments, torch.tensor([0, 2]), past_width=2)[:, 0]
    first, second = mask[0], mask[1]
    assert not first[:, :2].any()  # the first sequence has no cached state
    assert first[5, 2:].tolist() == [True, True, False, False, True, True, False]  # head + its own row
    assert first[3, 2:].tolist() == [True, True, True, True, False, False, False]
    assert first[6, 2:].tolist() == [False] * 6 + [True]  # padding sees itself only
    assert second[2].tolist() == [True, True, False, False, True, False, False, False, False]
    assert second[1].tolist() == [True, True, True, True, False, False, False, False, False]


def test_passes_keep_every_sequence_once_within_all_three_bounds() -> None:
    rng = np.random.default_rng(0)
    sequences = [
        PackedSequence(i, int(rng.integers(0, 60)), (), [Row(0, i, -1, (), length=int(rng.integers(1, 30)))])
        for i in range(200)
    ]
    batching = Batching(batch_tokens=100, batch_cached_tokens=300, batch_sequences=6)
    chunks = packed_batches(sequences, batching)
    assert sorted(s.key for chunk in chunks for s in chunk.sequences) == list(range(200))
    for chunk in chunks:
        count = len(chunk.sequences)
        assert count <= 6
        assert count == 1 or count * max(s.new_length for s in chunk.sequences) <= 100
        assert count == 1 or count * max(s.past_length for s in chunk.sequences) <= 300
    order = [(s.new_length, s.past_length) for chunk in chunks for s in chunk.sequences]
    assert order == sorted(order)


@pytest.mark.parametrize("placement", [Placement.ON_CUE, Placement.BEFORE_CUE])
@pytest.mark.parametrize("mode", list(ScoringMode))
@pytest.mark.parametrize("pack_rows", [2, 32])
def test_packed_rows_score_as_one_sequence_per_row(
    placement: Placement, mode: ScoringMode, pack_rows: int
) -> None:
    bundle = tiny_bundle(3)
    adapter = _adapter(bundle, placement)
    requests = _requests(mode)
    before = ScoringEngine(bundle, [adapter], batching=BEFORE).score_many(requests)
    packed_engine = ScoringEngine(bundle, [adapter], pack_rows=pack_rows, batch_tokens=64)
    fresh = packed_engine.score_many(requests)  # texts at the head of their first sequence
    cached = packed_engine.score_many(requests)  # then from the cache
    for old, new, again in zip(before, fresh, cached, strict=True):
        assert not isinstance(old, Exception) and not isinstance(new, Exception)
        assert not isinstance(again, Exception)
        np.testing.assert_allclose(new.log_probs, old.log_probs, atol=1e-5)
        np.testing.assert_allclose(again.log_probs, old.log_probs, atol=1e-5)
        assert new.tokens_processed == old.tokens_processed  # each text charged once, rows as before
    assert packed_engine.text_states.scope_entries("a") == len(TEXTS)


def test_a_text_encoded_with_its_rows_is_cached_as_if_encoded_alone() -> None:
    bundle = tiny_bundle(4)
    adapter = _adapter(bundle, Placement.ON_CUE)
    request = _requests(ScoringMode.FIRST_TOKEN)[0]
    apart = ScoringEngine(bundle, [adapter], encode_with_rows=False)
    together = ScoringEngine(bundle, [adapter])
    apart.score(request)
    together.score(request)
    for text in TEXTS:
        key = together.parts.bos + together.prepare.tokens(text, "t", 99)
        one, other = apart.text_states.get("a", key), together.text_states.get("a", key)
        assert one is not None and other is not None and one.length == other.length == len(key)
        for (k1, v1), (k2, v2) in zip(one.layers, other.layers, strict=True):
            torch.testing.assert_close(k2, k1, atol=1e-6, rtol=0)
            torch.testing.assert_close(v2, v1, atol=1e-6, rtol=0)


def test_grouped_attention_equals_the_models_own() -> None:
    bundle = tiny_bundle(5)
    config = bundle.model.config
    assert config.num_key_value_heads < config.num_attention_heads and config._attn_implementation == "sdpa"
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.inference_mode():
        own = bundle.model(input_ids=ids, attention_mask=mask).logits
        with attention(config, grouped=True):
            assert config._attn_implementation != "sdpa"
            grouped = bundle.model(input_ids=ids, attention_mask=mask).logits
    assert config._attn_implementation == "sdpa"  # put back
    torch.testing.assert_close(grouped[:, 2:], own[:, 2:], atol=1e-6, rtol=0)
    adapters = ServedAdapters(bbt_dimension=16, prompt_length=3, shipped_generators=False).build(bundle)
    candidates = np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)
    for request in (
        ScoreRequest("none", np.zeros((1, 0), np.float32), TEXTS, [" a", " b"], cue=CUE),
        ScoreRequest("bbt", candidates, TEXTS, [" a", " b"], cue=CUE),
    ):
        plain = ScoringEngine(bundle, adapters, grouped_attention=False).score(request).log_probs
        grouped_scores = ScoringEngine(bundle, adapters).score(request).log_probs
        np.testing.assert_allclose(grouped_scores, plain, atol=1e-6)


def _tiny_sliding_bundle(window: int) -> ModelBundle:
    """A 2-layer model in Gemma 3's layout: a sliding-window layer, then a full-attention one."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = tiny_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=window,
        layer_types=["sliding_attention", "full_attention"], max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    return prepare_bundle(Gemma3ForCausalLM(config).float(), tokenizer, model_id="tiny-gemma3")


@pytest.mark.parametrize("placement", [Placement.ON_CUE, Placement.BEFORE_CUE])
def test_a_sliding_window_model_keeps_its_window_when_packed(placement: Placement) -> None:
    bundle = _tiny_sliding_bundle(window=4)  # shorter than most texts: the window matters
    adapter = _adapter(bundle, placement)
    request = _requests(ScoringMode.FULL_CHOICE)[0]
    whole = ScoringEngine(bundle, [adapter], reuse_text_states=False).score(request).log_probs
    engine = ScoringEngine(bundle, [adapter])
    for _ in range(2):  # fresh, then cached
        np.testing.assert_allclose(engine.score(request).log_probs, whole, atol=1e-5)
    unwindowed = _tiny_sliding_bundle(window=4096)
    far = ScoringEngine(unwindowed, [_adapter(unwindowed, placement)], reuse_text_states=False)
    assert np.abs(far.score(request).log_probs - whole).max() > 1e-3  # the window did change the scores


def test_batching_refuses_a_bound_below_one() -> None:
    with pytest.raises(ValueError, match="pack_rows must be at least 1"):
        Batching(pack_rows=0)
    assert dataclasses.replace(Batching(), batch_tokens=7).batch_tokens == 7
