"""The engine refuses what only it can check (token limits, an adapter it lacks) with an
InvalidRequest naming the field, and keeps no refused string in its token cache."""

from __future__ import annotations

import numpy as np
import pytest

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
    ("request_kwargs", "message"),
    [
        ({"texts": ["ok", "word " * 39]}, "texts[1]: 195 tokens exceed the limit of 40"),
        ({"cue": "Answer: " * 20}, "cue: 42 tokens exceed the limit of 40"),
        ({"choices": [" a very long choice string here"]},
         "shared_choices[0]: 20 tokens exceed the limit of 4"),
        ({"choices": [[" a"], [" b", " and so on and on"]]},
         "example_choices[1][1]: 8 tokens exceed the limit of 4"),
        ({"choices": [" positive", " positively"]},
         "shared_choices: two choices share their first token; use full-choice scoring"),
    ],
)  # fmt: skip
def test_the_engine_checks_the_token_limits_in_the_doors_wording(engine, request_kwargs, message):
    """Only the tokenizer can count tokens, so these limits are the engine's; every other limit is
    checked once, at the door (``tests/server/test_validation.py``), in the same wording."""
    fields = {"adapter": "bbt", "candidates": z(), "texts": OK_TEXTS, "choices": OK_CHOICES} | request_kwargs
    with pytest.raises(InvalidRequest) as caught:
        engine.score(ScoreRequest(**fields))
    assert str(caught.value) == message and message.startswith(f"{caught.value.field}: ")
    # ... and the engine keeps serving.
    assert engine.score(ScoreRequest("bbt", z(), OK_TEXTS, OK_CHOICES)).log_probs.shape == (1, 2, 2)


def test_the_engine_leaves_every_other_limit_to_the_door(engine):
    """More candidates than ``max_candidates`` and more sequences than ``max_sequences``: the door
    refuses such a request before it is queued; the engine, given one by a Python caller, scores it."""
    many = engine.score(ScoreRequest("bbt", z(6), OK_TEXTS, OK_CHOICES, ScoringMode.FULL_CHOICE))
    assert many.log_probs.shape == (6, 2, 2)


def test_unknown_adapter_lists_known_ones(engine):
    with pytest.raises(UnknownAdapter, match="unknown adapter 'cbpx'; known: none, bbt, cbp"):
        engine.score(ScoreRequest("cbpx", z(), OK_TEXTS, OK_CHOICES))


def test_errors_are_also_builtins(engine):
    with pytest.raises(ValueError):
        engine.score(ScoreRequest("cbpx", z(), OK_TEXTS, OK_CHOICES))


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
