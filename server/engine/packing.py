"""Packed passes: several rows after one cached state in one sequence, each row seeing the state and itself.

On the after-text placements every candidate of a generation runs the same few cue tokens after
the same text. Run as one sequence per row, each row needs its own copy of the text's keys and
values in the pass (rows x text length x 46 KB on SmolLM2), and a pass of 64 rows of 4 tokens is
too small a matmul to run fast. Packed, a sequence is one text's state followed by many rows, one
after another; a block-diagonal mask lets each row attend to the state and to its own earlier
tokens only, and each row's positions continue from the state's end as if it ran alone. The state
is stacked once per sequence, and a pass holds thousands of rows' tokens.

A text whose state is not cached yet can run at the head of its sequence instead of in a pass of
its own (``head``); its keys and values are then taken from that pass (``head_spans``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cbpt.server.engine.batching import Batching
from cbpt.server.engine.plan import Row

HEAD, PAD = -1, -2  # segment ids of a sequence's head tokens and of its padding; rows are 0, 1, ...


@dataclass
class PackedSequence:
    """One sequence of a pass: a cached state (``key``, ``past_length`` long) or the tokens that make it
    (``head``, encoded here), then ``rows`` one after the other."""

    key: Any  # what the state is found by: a text's (scope, tokens), a candidate's index
    past_length: int
    head: tuple[int, ...] = ()
    rows: list[Row] = field(default_factory=list)

    @property
    def new_length(self) -> int:
        return len(self.head) + sum(row.length for row in self.rows)


@dataclass
class PackedChunk:
    """The sequences of one forward pass."""

    sequences: list[PackedSequence]

    @property
    def rows(self) -> list[Row]:
        return [row for sequence in self.sequences for row in sequence.rows]

    @property
    def size(self) -> int:
        return len(self.sequences)

    def without(self, skip: Callable[[int], bool]) -> PackedChunk:
        """The chunk less the rows of owners ``skip`` names; a head stays (later sequences need its state)."""
        kept = [
            PackedSequence(s.key, s.past_length, s.head, [row for row in s.rows if not skip(row.owner)])
            for s in self.sequences
        ]
        return PackedChunk([s for s in kept if s.rows or s.head])


def packed_batches(sequences: Sequence[PackedSequence], batching: Batching) -> list[PackedChunk]:
    """Passes of at most ``batch_sequences`` sequences, ``batch_tokens`` padded new positions and
    ``batch_cached_tokens`` padded cached ones; sorted by new length, then state length, so that
    little is padding. A sequence over a bound goes alone."""
    ordered = list(sequences)
    if batching.sort_by_length:
        ordered.sort(key=lambda s: (s.new_length, s.past_length))
    chunks: list[PackedChunk] = []
    current: list[PackedSequence] = []
    past = new = 0
    for sequence in ordered:
        grown_past, grown_new = max(past, sequence.past_length), max(new, sequence.new_length)
        count = len(current) + 1
        if current and (
            count > batching.batch_sequences
            or count * grown_new > batching.batch_tokens
            or count * grown_past > batching.batch_cached_tokens
        ):
            chunks.append(PackedChunk(current))
            current, grown_past, grown_new = [], sequence.past_length, sequence.new_length
        current.append(sequence)
        past, new = grown_past, grown_new
    if current:
        chunks.append(PackedChunk(current))
    return chunks


@dataclass(frozen=True)
class PackedInputs:
    """What one packed pass feeds the model, and where each row's last token lands."""

    ids: torch.Tensor  # [sequences, width]
    positions: torch.Tensor  # [sequences, width]
    segments: torch.Tensor  # [sequences, width]: HEAD, PAD or the row's index in its sequence
    prompt_slots: torch.Tensor  # [sequences, width] bool: where soft prompts go, row after row
    row_sequence: torch.Tensor  # [rows]
    row_end: torch.Tensor  # [rows]: the row's last position in its sequence


def packed_inputs(
    chunk: PackedChunk, pad_id: int, prompt_span: Callable[[int], slice], inserted: int
) -> PackedInputs:
    """Token ids, position ids and segments of every sequence, right-padded. ``prompt_span(start)``
    is where a row starting at ``start`` takes its soft prompt; ``inserted`` prompt vectors come
    before a row's tokens."""
    width = max(sequence.new_length for sequence in chunk.sequences)
    ids, positions, segments, slots = [], [], [], []
    row_sequence, row_end = [], []
    for index, sequence in enumerate(chunk.sequences):
        own_ids, own_positions = [pad_id] * width, [0] * width
        own_segments, own_slots = [PAD] * width, [False] * width
        head = len(sequence.head)
        own_ids[:head] = sequence.head
        own_positions[:head] = range(head)
        own_segments[:head] = [HEAD] * head
        start, base = head, sequence.past_length + head  # rows continue from the state's (or head's) end
        for number, row in enumerate(sequence.rows):
            end = start + row.length
            own_ids[start + inserted : end] = row.tokens
            own_positions[start:end] = range(base, base + row.length)
            own_segments[start:end] = [number] * row.length
            span = prompt_span(start)
            own_slots[span] = [True] * (span.stop - span.start)
            row_sequence.append(index)
            row_end.append(end - 1)
            start = end
        ids.append(own_ids)
        positions.append(own_positions)
        segments.append(own_segments)
        slots.append(own_slots)
    return PackedInputs(
        torch.tensor(ids, dtype=torch.long),
        torch.tensor(positions, dtype=torch.long),
        torch.tensor(segments, dtype=torch.long),
        torch.tensor(slots, dtype=torch.bool),
        torch.tensor(row_sequence, dtype=torch.long),
        torch.tensor(row_end, dtype=torch.long),
    )


def packed_mask(segments: torch.Tensor, past_lengths: torch.Tensor, past_width: int) -> torch.Tensor:
    """[sequences, 1, width, past_width + width] bool: each row sees its sequence's state (left-padded to
    ``past_width``), the head and its own earlier tokens; the head sees the state and itself, causally.
    A padding position sees itself only, so no query row is empty."""
    width = segments.shape[1]
    query, key = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    real = query != PAD
    new = causal & real & (key != PAD) & ((key == query) | (key == HEAD))
    new |= torch.eye(width, dtype=torch.bool) & ~real
    cached = torch.arange(past_width)[None, :] >= (past_width - past_lengths)[:, None]  # [sequences, past]
    past = cached[:, None, :] & real
    return torch.cat([past, new], dim=-1)[:, None]


def sliding_masks(
    mask: torch.Tensor, positions: torch.Tensor, past_lengths: torch.Tensor, config: Any
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The mask for every layer, or per layer type where the model has sliding-window layers (Gemma 3):
    those see only keys less than ``sliding_window`` positions back."""
    types = set(getattr(config, "layer_types", None) or ())
    window = getattr(config, "sliding_window", None)
    if "sliding_attention" not in types or not window:
        return mask
    past_width = mask.shape[-1] - positions.shape[1]
    past_positions = torch.arange(past_width)[None, :] - (past_width - past_lengths)[:, None]
    keys = torch.cat([past_positions, positions], dim=-1)
    near = (positions[:, :, None] - keys[:, None, :]) < window
    sliding = mask & near[:, None]  # a padding position's own diagonal is near: it stays
    return {layer_type: sliding if layer_type == "sliding_attention" else mask for layer_type in types}
