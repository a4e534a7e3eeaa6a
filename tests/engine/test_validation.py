"""The engine refuses malformed requests with an InvalidRequest naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from cbpt.common.choices import Choices
from cbpt.common.limits import Limits
from cbpt.server.engine import ScoreRequest, ScoringMode
from cbpt.server.engine.prepare import TokenCache, entry_bytes
from cbpt.server.errors import InvalidRequest, UnknownAdapter
from cbpt.server.testing import tiny_engine

OK_TEXTS = ["Review: fine\nSentiment:", "Review: awful\nSentiment:"]
OK_CHOICES = [" positive", " negative"]


@pytest.fixture(scope="module")
def engine():
    return tiny_engine(
        Limits(
            max_candidates=4,
            max_examples=3,
            max_choices=3,
            max_text_chars=200,
            max_text_tokens=40,
            max_choice_tokens=4,
            max_sequences=8,
        )
    )


def z(n=1, dim=16):
    return np.zeros((n, dim), np.float32)


@pytest.mark.parametrize(
    ("request_kwargs", "field", "fragment"),
    [
        ({"candidates": z(1, 15)}, "dimension", "expected 16"),
        ({"candidates": z(0)}, "num_candidates", "at least 1"),
        ({"candidates": z(5)}, "num_candidates", "limit of 4"),
        ({"candidates": np.array([[0.0] * 16, [np.nan] + [0.0] * 15], np.float32)}, "candidates[1]", "NaN"),
        ({"candidates": np.array([[np.inf] * 16], np.float32)}, "candidates[0]", "inf"),
        # Finding 8: saturating vectors were scored (identically) instead of being refused.
        (
            {"candidates": np.array([[0.5] * 16, [0.0] * 15 + [1e30]], np.float32)},
            "candidates[1]",
            "1e+30 exceeds",
        ),
        ({"candidates": np.full((1, 16), 3e38, np.float32)}, "candidates[0]", "bound of 1000"),
        (
            {"candidates": np.array([[0.0] * 15 + [-1000.5]], np.float32)},
            "candidates[0]",
            "max_candidate_abs",
        ),
        ({"texts": []}, "texts", "at least one"),
        ({"texts": ["a", "b", "c", "d"]}, "texts", "4 texts exceed the limit of 3"),
        ({"texts": ["ok", "  "]}, "texts[1]", "empty"),
        ({"texts": ["x" * 201]}, "texts[0]", "201 characters"),
        ({"texts": ["word " * 39]}, "texts[0]", "tokens exceed"),
        ({"choices": Choices.shared_by_all([])}, "shared_choices", "at least one"),
        ({"choices": [" a", " b", " c", " d"]}, "shared_choices", "limit of 3"),
        ({"choices": [" a", ""]}, "shared_choices[1]", "empty choice"),
        ({"choices": [[" a"], [" b"], [" c"]]}, "example_choices", "3 choice lists for 2 texts"),
        ({"choices": [[" a"], [" b", ""]]}, "example_choices[1][1]", "empty choice"),
        ({"choices": [" positive", " positively"]}, "shared_choices", "share their first token"),
        ({"choices": [" a very long choice string here"]}, "shared_choices[0]", "tokens exceed"),
        # Finding 2 of #22: a choice string was tokenised (and cached) however long it was.
        ({"choices": [" a", "x" * 257]}, "shared_choices[1]", "257 characters exceed the limit of 256"),
        ({"texts": ["one"], "choices": [[" a", ""]]}, "example_choices[0][1]", "empty choice"),
        ({"candidates": z(4), "texts": ["a", "b", "c"]}, "num_candidates", "exceeds the limit of 8"),
    ],
)
def test_invalid_requests_name_the_field(engine, request_kwargs, field, fragment):
    fields = {"adapter": "bbt", "candidates": z(), "texts": OK_TEXTS, "choices": OK_CHOICES} | request_kwargs
    with pytest.raises(InvalidRequest) as caught:
        engine.score(ScoreRequest(**fields))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert fragment in str(caught.value)
    # ... and the engine keeps serving.
    assert engine.score(ScoreRequest("bbt", z(), OK_TEXTS, OK_CHOICES)).log_probs.shape == (1, 2, 2)


def test_full_choice_mode_counts_choices_in_sequences(engine):
    with pytest.raises(InvalidRequest, match="exceeds the limit of 8"):
        engine.score(ScoreRequest("bbt", z(2), OK_TEXTS, [" a", " b", " c"], ScoringMode.FULL_CHOICE))


def test_unknown_adapter_lists_known_ones(engine):
    with pytest.raises(UnknownAdapter, match="unknown adapter 'cbpx'; known: none, bbt, cbp"):
        engine.score(ScoreRequest("cbpx", z(), OK_TEXTS, OK_CHOICES))


def test_errors_are_also_builtins(engine):
    with pytest.raises(ValueError):
        engine.score(ScoreRequest("bbt", z(1, 3), OK_TEXTS, OK_CHOICES))


def test_the_candidate_bound_is_inclusive_and_stated(engine):
    at_bound = np.full((1, 16), -engine.limits.max_candidate_abs, np.float32)
    assert engine.score(ScoreRequest("bbt", at_bound, OK_TEXTS, OK_CHOICES)).log_probs.shape == (1, 2, 2)
    assert engine.info().limits.max_candidate_abs == 1000.0


def test_a_refused_string_is_tokenised_but_never_cached(engine):
    """Finding 2 of #22: each refused call left its strings in the token cache (20 MiB a call)."""
    cache = engine.prepare.cache
    long_choice, long_text, long_cue = " and so on" * 3, "word " * 39, "Answer: " * 20
    for fields in (
        {"choices": [" a", long_choice]},
        {"texts": ["ok", long_text]},
        {"cue": long_cue},
    ):
        with pytest.raises(InvalidRequest, match="tokens exceed"):
            engine.score(ScoreRequest(**({"adapter": "bbt", "candidates": z(), "texts": OK_TEXTS,
                                          "choices": OK_CHOICES} | fields)))  # fmt: skip
    assert cache.get(long_choice) is cache.get(long_text) is cache.get(long_cue) is None
    engine.score(ScoreRequest("bbt", z(), OK_TEXTS, OK_CHOICES))
    assert cache.get(OK_CHOICES[0]) is not None  # what is scored is kept


def test_count_tokens_keeps_only_texts_short_enough_to_score(engine):
    """Finding 2 of #22: CountTokens filled the same cache with texts of 16k tokens."""
    too_long, short = "word " * 39, "Review: fine"
    counts = engine.count_tokens([too_long, short])
    assert counts[0] > engine.limits.max_text_tokens  # counted, as CountTokens promises
    assert engine.prepare.cache.get(too_long) is None and engine.prepare.cache.get(short) is not None


def test_the_token_cache_is_bounded_in_bytes_least_recently_used_out_first():
    """Finding 2 of #22: the cache was bounded by entries (4,096) only, whatever each held."""
    texts = [f"{index:04d}" + "x" * 1000 for index in range(50)]
    one = entry_bytes(texts[0], tuple(range(300)))
    cache = TokenCache(capacity=4096, max_bytes=10 * one)
    for text in texts:
        cache.put(text, tuple(range(300)))
        assert cache.total_bytes <= cache.max_bytes
    assert len(cache) == 10 and cache.total_bytes == 10 * one
    assert cache.get(texts[-1]) is not None and cache.get(texts[0]) is None
    cache.put("huge", tuple(range(20 * 300)))  # larger than the whole bound: not kept, nothing evicted
    assert cache.get("huge") is None and len(cache) == 10
