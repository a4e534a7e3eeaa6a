"""Planning forward batches: one row per (candidate, example[, choice]), length-sorted chunks.

Rows sorted by length and cut into passes of a bounded number of padded tokens waste little on
padding; unsorted or much bigger passes waste most of the CPU's matmul speed on padding and cache
misses (see benchmarks/throughput.py; the bounds are ``Batching``'s). Rows that run after a cached
state are packed several to a sequence instead (packing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from cbpt.server.engine.prepare import Prepared

T = TypeVar("T")


@dataclass
class Row:
    """One sequence of a forward batch."""

    candidate: int
    example: int
    choice: int  # -1 in first-token mode: every choice is read from one position
    tokens: tuple[int, ...]  # what follows the cached or prefixed part
    scored: int = 0  # trailing tokens whose log-probs are summed (full-choice mode)
    length: int = 0  # tokens this row runs through the model, soft prompt included
    owner: int = 0  # which of the merged requests the row belongs to


class Chunk(Protocol):
    """The rows of one forward pass, in the order the pass reads them out."""

    @property
    def rows(self) -> list[Row]: ...

    @property
    def size(self) -> int:
        """Sequences the pass runs (0: nothing to run)."""
        ...

    def without(self, skip: Callable[[int], bool]) -> Chunk:
        """The chunk less the rows of the owners ``skip`` names (their request was cancelled)."""
        ...


@dataclass
class RowChunk:
    """A pass of whole rows, one sequence each."""

    rows: list[Row]

    @property
    def size(self) -> int:
        return len(self.rows)

    def without(self, skip: Callable[[int], bool]) -> RowChunk:
        return RowChunk([row for row in self.rows if not skip(row.owner)])


def plan_rows(
    num_candidates: int,
    examples: list[tuple[int, ...]],
    choices: list[list[tuple[int, ...]]] | None,
) -> list[Row]:
    """Rows for every candidate x example, and x choice when ``choices`` is given (full-choice mode)."""
    rows = []
    for candidate in range(num_candidates):
        for example, tokens in enumerate(examples):
            if choices is None:
                rows.append(Row(candidate, example, -1, tokens))
                continue
            for k, option in enumerate(choices[example]):
                rows.append(Row(candidate, example, k, tokens + option, len(option)))
    return rows


def padded_batches(
    items: Sequence[T], width: Callable[[T], int], max_rows: int, max_tokens: int
) -> list[list[T]]:
    """Consecutive runs of ``items`` of at most ``max_rows`` items and ``max_tokens`` padded tokens
    (items x the widest); an item wider than ``max_tokens`` goes alone. What bounds one step's cost."""
    batches: list[list[T]] = []
    current: list[T] = []
    widest = 0
    for item in items:
        grown = max(widest, width(item))
        if current and (len(current) >= max_rows or (len(current) + 1) * grown > max_tokens):
            batches.append(current)
            current, grown = [], width(item)
        current.append(item)
        widest = grown
    if current:
        batches.append(current)
    return batches


def length_sorted_chunks(
    rows: list[Row],
    max_rows: int,
    max_tokens: int,
    width: Callable[[Row], int] = lambda row: row.length,
    *,
    sort: bool = True,
) -> list[list[Row]]:
    """Group rows by length into chunks of at most ``max_rows`` rows and ``max_tokens`` padded tokens.

    ``sort=False`` keeps request order; it exists so the benchmark can show what sorting buys.
    """
    return padded_batches(sorted(rows, key=width) if sort else rows, width, max_rows, max_tokens)


def plan_group(
    group: list[Prepared], after_text: bool, full: bool
) -> tuple[list[tuple[int, int]], list[Row]]:
    """Every request's rows with group-wide indices (requests laid end to end), and each request's
    first (candidate, example) index: what the scores are written back by.

    What a row runs after its cached or flat part: the text only when it comes after the prompt
    (prefix placement), then the cue (and, in full-choice mode, one choice).
    """
    offsets: list[tuple[int, int]] = []
    rows: list[Row] = []
    first_candidate = first_example = 0
    for owner, prepared in enumerate(group):
        encoded = prepared.encoded
        tails = [(() if after_text else text) + encoded.cue for text in encoded.texts]
        for row in plan_rows(len(prepared.candidates), tails, encoded.choices if full else None):
            row.candidate += first_candidate
            row.example += first_example
            row.owner = owner
            rows.append(row)
        offsets.append((first_candidate, first_example))
        first_candidate += len(prepared.candidates)
        first_example += len(encoded.texts)
    return offsets, rows
