"""Request planning: every chunk fits the limits, and the chunks cover the work exactly once."""

from __future__ import annotations

import itertools

import pytest

from cbpt.client.errors import RequestRejected
from cbpt.client.rpc.splitting import Workload, plan_chunks
from cbpt.common.limits import Limits


def _work(
    candidates: int, examples: int, *, counts=None, full: bool = False, dimension: int = 16
) -> Workload:
    return Workload(
        num_candidates=candidates,
        dimension=dimension,
        base_bytes=40,
        example_bytes=[30 + (i % 7) for i in range(examples)],
        choice_counts=counts or [2] * examples,
        full_choice=full,
    )


def _check(work: Workload, limits: Limits) -> list:
    chunks = plan_chunks(work, limits)
    covered = [(c, e) for chunk in chunks for c in chunk.candidates for e in chunk.examples]
    assert sorted(covered) == list(
        itertools.product(range(work.num_candidates), range(len(work.example_bytes)))
    )
    for chunk in chunks:
        sequences = sum((work.choice_counts[e] if work.full_choice else 1) for e in chunk.examples) * len(
            chunk.candidates
        )
        assert len(chunk.candidates) <= (limits.max_candidates or 10**9)
        assert len(chunk.examples) <= (limits.max_examples or 10**9)
        assert sequences <= (limits.max_sequences or 10**9)
    return chunks


def test_unlimited_is_one_request() -> None:
    assert len(_check(_work(20, 32), Limits.stated())) == 1


@pytest.mark.parametrize(
    "limits",
    [
        Limits.stated(max_candidates=3),
        Limits.stated(max_examples=5),
        Limits.stated(max_sequences=12),
        Limits.stated(max_candidates=3, max_examples=5, max_sequences=12),
        Limits.stated(max_message_bytes=600),
    ],
)
def test_limits_are_respected(limits: Limits) -> None:
    assert len(_check(_work(7, 11), limits)) > 1


def test_full_choice_counts_choices() -> None:
    work = _work(4, 6, counts=[3, 1, 4, 2, 2, 5], full=True)
    _check(work, Limits.stated(max_sequences=10))


def test_balanced_candidate_chunks() -> None:
    chunks = plan_chunks(_work(10, 2), Limits.stated(max_candidates=4))
    assert sorted(len(chunk.candidates) for chunk in chunks) == [3, 3, 4]


def test_an_example_too_large_alone_is_named() -> None:
    with pytest.raises(RequestRejected, match=r"texts\[0\]"):
        plan_chunks(_work(2, 3, counts=[9, 1, 1], full=True), Limits.stated(max_sequences=8))


def test_text_parts_respect_the_count_and_the_byte_limit() -> None:
    from cbpt.client.rpc.splitting import text_parts

    assert text_parts([10] * 7, 3, 0) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert text_parts([10] * 7, 0, 64 + 25) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 7)]
    assert text_parts([500], 0, 100) == [slice(0, 1)]  # one text too large alone: the server names it
    assert text_parts([], 3, 0) == []


def test_count_tokens_splits_to_the_servers_limits(client, limited_server: str) -> None:
    from cbpt.client.rpc.sdk import TuningClient

    texts = [f"Review: film number {i}" for i in range(12)]  # max_examples 5 on the limited server
    with TuningClient(limited_server) as limited:
        assert limited.count_tokens(texts) == client.count_tokens(texts)
        assert limited.stats.calls == 1 + 3
