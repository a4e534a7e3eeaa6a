"""What one engine job may cost: passes bounded in sequences and padded tokens, merged requests'
texts encoded in shared passes (each under its own scope), and text states bounded in bytes.

"Tenants" (#22), findings 0 and 1. Costs are counted (padded positions per forward pass, bytes of
live key/value states), never timed.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from cbpt.common.limits import Limits
from cbpt.server.adapters import Placement
from cbpt.server.adapters.bbt import BlackBoxTuning
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.engine import text_states as text_states_module
from cbpt.server.engine.kv import KVState, TextStateCache
from cbpt.server.testing import tiny_bundle

CHOICES = [" positive", " negative"]


def suffix_engine(**options: object) -> ScoringEngine:
    bundle = tiny_bundle(0)
    adapter = BlackBoxTuning(
        bundle.hidden_size, bundle.embedding_std, name="bbt-suffix", dimension=16, prompt_length=4,
        placement=Placement.BEFORE_CUE,
    )  # fmt: skip
    return ScoringEngine(bundle, [adapter], **options)


def text_of(engine: ScoringEngine, index: int, tokens: int) -> str:
    """A distinct text of at most ``tokens`` tokens under the tiny tokenizer, as long as it gets."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz ,."))
    text = f"{index:05d} " + "".join(np.random.default_rng(index).choice(letters, size=4 * tokens))
    count = lambda end: len(engine.bundle.tokenizer(text[:end], add_special_tokens=False)["input_ids"])  # noqa: E731
    low, high = 0, len(text)
    while low < high:  # the longest prefix within ``tokens``
        middle = (low + high + 1) // 2
        low, high = (middle, high) if count(middle) <= tokens else (low, middle - 1)
    return text[:low]


def request(texts: list[str], candidates: int = 1, scope: str = "", seed: int = 0) -> ScoreRequest:
    z = np.random.default_rng(seed).normal(size=(candidates, 16)).astype(np.float32)
    return ScoreRequest("bbt-suffix", z, texts, CHOICES, cue="\nSentiment:", scope=scope)


class PassCosts:
    """Padded positions of each forward pass of the backbone: rows x new tokens run, and rows x cached
    tokens attended over (a packed pass's mask is [sequences, 1, new, cached + new])."""

    def __init__(self, engine: ScoringEngine) -> None:
        self.costs: list[int] = []
        self.cached: list[int] = []
        self._handle = engine.bundle.model.base_model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, _module: object, _args: object, kwargs: dict, _output: object) -> None:
        new = kwargs["inputs_embeds"] if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]
        rows, width = new.shape[:2]
        self.costs.append(int(rows * width))
        mask = kwargs.get("attention_mask")
        self.cached.append(0 if mask is None else int(rows * (mask.shape[-1] - width)))

    def remove(self) -> None:
        self._handle.remove()


@pytest.fixture
def live_states(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Bytes of the text states alive at once (in a job or in the cache), and their peak."""
    gauge = {"live": 0, "peak": 0}

    def forget(size: int) -> None:
        gauge["live"] -= size

    def tracking(real: Callable[..., list[KVState]]) -> Callable[..., list[KVState]]:
        def tracked(*args: object, **kwargs: object) -> list[KVState]:
            states = real(*args, **kwargs)
            for state in states:
                gauge["live"] += state.nbytes
                weakref.finalize(state, forget, state.nbytes)
            gauge["peak"] = max(gauge["peak"], gauge["live"])
            return states

        return tracked

    for name in ("split_states", "take_states"):  # states encoded apart, or taken from a row pass
        monkeypatch.setattr(text_states_module, name, tracking(getattr(text_states_module, name)))
    yield gauge


@pytest.mark.parametrize("encode_with_rows", [True, False])
def test_every_pass_is_bounded_in_padded_new_and_cached_tokens(encode_with_rows: bool) -> None:
    """Before, a pass encoded up to 64 texts whatever their length: 32 x 49 positions against 512. Now
    every pass (encoding texts, alone or with their rows, or running rows after cached texts) runs at
    most ``batch_tokens`` padded positions and attends over at most ``batch_cached_tokens`` cached ones."""
    engine = suffix_engine(batch_tokens=512, batch_cached_tokens=700, encode_with_rows=encode_with_rows)
    texts = [text_of(engine, i, 48) for i in range(32)]
    costs = PassCosts(engine)
    try:
        engine.score(request(texts, candidates=2, scope="k"))  # texts encoded
        engine.score(request(texts, candidates=3, scope="k"))  # rows after cached texts
    finally:
        costs.remove()
    assert max(costs.costs) <= 512, costs.costs
    assert 0 < max(costs.cached) <= 700, costs.cached


def test_scores_in_windows_of_texts_equal_one_window() -> None:
    texts = [f"Review {i}: " + "quite good " * (i % 7) for i in range(24)]
    whole = suffix_engine().score(request(texts, candidates=2))
    engine = suffix_engine(max_state_bytes=2_000)  # a few texts' states at a time
    windowed = engine.score(request(texts, candidates=2))
    np.testing.assert_allclose(windowed.log_probs, whole.log_probs, atol=1e-5)
    assert windowed.tokens_processed == whole.tokens_processed


def test_merged_requests_encode_their_texts_in_shared_passes_each_in_its_own_scope() -> None:
    """64 two-text calls of 20 keys cost the passes of one 128-text call, not one pass per call;
    a text two keys both send is computed and cached once for each, never shared."""
    engine = suffix_engine(text_states=TextStateCache(max_scopes=32))
    small = [
        request(
            [f"Sentence {i}: profits rose", f"Sentence {i}: the outlook is weak"], scope=f"k{i % 20}", seed=i
        )
        for i in range(64)
    ]
    shared = request(["the same text"], scope="a"), request(["the same text"], scope="b")
    alone = {i: engine.score(small[i]) for i in range(0, 64, 8)}
    engine.text_states = TextStateCache(max_scopes=32)
    costs = PassCosts(engine)
    job = engine.job([*small, *shared])
    while job.step():
        pass
    costs.remove()
    outcomes = job.outcomes()
    texts, rows = 2 * 64 + 2, 2 * 64 + 2
    assert job.steps_done <= math.ceil(texts / 64) + math.ceil(rows / 64), job.steps_done
    for i, single in alone.items():
        merged = outcomes[i]
        np.testing.assert_allclose(merged.log_probs, single.log_probs, atol=1e-5)
        assert merged.tokens_processed == single.tokens_processed
    assert engine.text_states.scope_entries("a") == engine.text_states.scope_entries("b") == 1
    a, b = (engine.text_states.get(scope, engine.parts.bos + engine.prepare.tokens("the same text", "t", 99))
            for scope in "ab")  # fmt: skip
    assert a is not None and b is not None and a is not b
    assert outcomes[64].tokens_processed == outcomes[65].tokens_processed


def test_the_states_per_token_are_what_the_docs_scale_by() -> None:
    engine = suffix_engine()
    engine.score(request(["a text of some length"], scope="s"))
    state = next(iter(engine.text_states._scopes["s"].values()))
    assert state.nbytes == state.length * engine.parts.state_bytes_per_token == state.length * 256


def test_a_call_at_every_limit_holds_at_most_the_job_bound_of_text_states(
    live_states: dict[str, int],
) -> None:
    """Finding 1: before, the job kept every text's states to its end (here 128 texts x 129 tokens, 4.2 MB;
    512 x 513 on SmolLM2 at the default limits, 11.25 GiB). Now at most the job's bound plus what the
    key's cache may keep, whatever the call: the bounds are bytes, so they scale by bytes per token."""
    limits = Limits(
        max_candidates=4, max_examples=128, max_choices=16, max_text_tokens=128, max_choice_tokens=16,
        max_sequences=512,
    )  # fmt: skip
    whole = limits.max_examples * (limits.max_text_tokens + 1) * 256
    job_bytes = per_key = whole // 8
    engine = suffix_engine(
        limits=limits, max_state_bytes=job_bytes, text_states=TextStateCache(per_key, 8, 4 * per_key)
    )
    texts = [text_of(engine, i, limits.max_text_tokens) for i in range(limits.max_examples)]
    assert min(len(engine.prepare.tokens(text, "t", 999)) for text in texts) >= limits.max_text_tokens - 2
    choices = list("ABCDEFGHIJKLMNOP")  # one byte-level token each: distinct first tokens
    z = np.random.default_rng(0).normal(size=(limits.max_candidates, 16)).astype(np.float32)
    call = ScoreRequest("bbt-suffix", z, texts, choices, cue="\nSentiment:", scope="hostile")
    result = engine.score(call)
    assert result.log_probs.shape == (limits.max_candidates, limits.max_examples, 16)
    assert np.isfinite(result.log_probs).all()
    assert live_states["peak"] <= job_bytes + per_key, (live_states["peak"], job_bytes + per_key, whole)
    assert engine.state_budget.peak <= job_bytes and engine.state_budget.held == 0


def test_jobs_taking_turns_share_one_budget_and_a_stopped_job_gives_its_window_back() -> None:
    """The bound is on all running jobs together: a key running several calls beside others' cannot
    multiply it. Each window takes what is free (at least one text)."""
    texts = [f"Filing {i}: " + "revenue grew in the quarter " * 3 for i in range(24)]
    engine = suffix_engine(max_state_bytes=30_000, text_states=TextStateCache(0, 8, 0))  # nothing cached
    per_text = max(len(engine.prepare.tokens(t, "t", 999)) + len(engine.parts.bos) for t in texts) * 256
    jobs = [engine.job([request(texts, candidates=2, scope=f"k{k}", seed=k)]) for k in range(3)]
    running = list(jobs)
    while running:  # round robin, as the scheduler takes turns
        running = [job for job in running if job.step()]
        assert engine.state_budget.held <= 30_000 + len(jobs) * per_text
    assert engine.state_budget.peak <= 30_000 + len(jobs) * per_text
    assert engine.state_budget.held == 0
    stopped = engine.job([request(texts, candidates=2, scope="gone")])
    for _ in range(3):
        stopped.step()
    assert engine.state_budget.held > 0
    stopped.cancel_all()
    while stopped.step():
        pass
    assert engine.state_budget.held == 0
