"""Cutting one population x batch into requests that respect the server's stated limits.

The tuner sends a whole generation in one ``evaluate``; a server may accept fewer
candidates, examples, sequences or bytes per request. The plan below splits the
examples first (greedily, in order) and then the candidates, so the stitched
result is exactly what one unlimited call would return.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from cbpt.client.errors import FieldViolation, RequestRejected
from cbpt.common.limits import Limits

# Bytes reserved for the response header fields (counts, tokens, seconds) and framing.
RESPONSE_OVERHEAD = 64
# Bytes for the candidates field's tag and length prefix.
CANDIDATES_OVERHEAD = 16


@dataclass(frozen=True)
class Chunk:
    """One request: a contiguous range of candidates and a contiguous range of examples."""

    candidates: range
    examples: range


@dataclass(frozen=True)
class Workload:
    """Sizes the plan needs; per-example byte counts come from protobuf, so they are exact."""

    num_candidates: int
    dimension: int
    base_bytes: int  # a request with no texts and no candidates (adapter, shared choices, counts, mode)
    example_bytes: Sequence[int]  # each text (plus its own choice list, if per-example)
    choice_counts: Sequence[int]
    full_choice: bool


def _limit(value: int) -> float:
    return float(value) if value > 0 else math.inf


@dataclass(frozen=True)
class _Span:
    """Running totals over a contiguous range of examples, so growing a range costs O(1)."""

    examples: range
    text_bytes: int
    sequences: int  # per candidate
    width: int  # widest choice list

    @classmethod
    def empty(cls, start: int) -> _Span:
        return cls(range(start, start), 0, 0, 0)

    def grow(self, work: Workload) -> _Span:
        index = self.examples.stop
        count = work.choice_counts[index]
        return _Span(
            examples=range(self.examples.start, index + 1),
            text_bytes=self.text_bytes + work.example_bytes[index],
            sequences=self.sequences + (count if work.full_choice else 1),
            width=max(self.width, count),
        )


def _fits(candidates: int, span: _Span, work: Workload, limits: Limits) -> bool:
    max_bytes = _limit(limits.max_message_bytes)
    request_bytes = work.base_bytes + span.text_bytes + candidates * work.dimension * 4 + CANDIDATES_OVERHEAD
    response_bytes = candidates * len(span.examples) * span.width * 4 + RESPONSE_OVERHEAD
    return (
        len(span.examples) <= _limit(limits.max_examples)
        and candidates * span.sequences <= _limit(limits.max_sequences)
        and request_bytes <= max_bytes
        and response_bytes <= max_bytes
    )


def _example_spans(work: Workload, limits: Limits) -> list[_Span]:
    spans: list[_Span] = []
    total = len(work.example_bytes)
    span = _Span.empty(0)
    while span.examples.stop < total:
        grown = span.grow(work)
        if _fits(1, grown, work, limits):
            span = grown
            continue
        index = span.examples.stop
        if not span.examples:
            raise RequestRejected(
                f"texts[{index}]: one candidate on this example alone exceeds the server's limits "
                "(max_sequences or max_message_bytes)",
                (FieldViolation(f"texts[{index}]", "too large for max_sequences or max_message_bytes"),),
            )
        spans.append(span)
        span = _Span.empty(index)
    if span.examples:
        spans.append(span)
    return spans


def _max_candidates(span: _Span, work: Workload, limits: Limits) -> int:
    """The largest candidate count that fits with ``span`` (binary search: _fits is monotone)."""
    low, high = 1, int(min(_limit(limits.max_candidates), work.num_candidates))
    while low < high:
        middle = (low + high + 1) // 2
        if _fits(middle, span, work, limits):
            low = middle
        else:
            high = middle - 1
    return low


def _balanced(total: int, most: int) -> list[range]:
    """Split ``range(total)`` into the fewest parts of at most ``most``, sizes differing by at most one."""
    parts = math.ceil(total / most)
    bounds = [round(i * total / parts) for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


def plan_chunks(work: Workload, limits: Limits) -> list[Chunk]:
    """Every request needed to score ``work`` within ``limits``, in candidate-major order."""
    if work.num_candidates < 1 or not work.example_bytes:
        return []
    chunks: list[Chunk] = []
    for span in _example_spans(work, limits):
        for candidates in _balanced(work.num_candidates, _max_candidates(span, work, limits)):
            chunks.append(Chunk(candidates=candidates, examples=span.examples))
    chunks.sort(key=lambda chunk: (chunk.candidates.start, chunk.examples.start))
    return chunks


def consecutive_parts(sizes: Sequence[int], max_count: int, max_total: int) -> list[slice]:
    """Consecutive slices of items (their sizes given) of at most ``max_count`` items and ``max_total``
    in size (0: unlimited); an item larger than ``max_total`` goes alone."""
    parts: list[slice] = []
    start, size = 0, 0
    for index, each in enumerate(sizes):
        full = (max_count and index - start >= max_count) or (max_total and size + each > max_total)
        if full and index > start:
            parts.append(slice(start, index))
            start, size = index, 0
        size += each
    if start < len(sizes):
        parts.append(slice(start, len(sizes)))
    return parts


def text_parts(text_bytes: Sequence[int], max_texts: int, max_bytes: int) -> list[slice]:
    """Consecutive slices of texts (their request bytes given) within a request's text count and byte
    size (0: unlimited), for calls that carry texts alone (``CountTokens``)."""
    return consecutive_parts(text_bytes, max_texts, max_bytes - 64 if max_bytes else 0)
