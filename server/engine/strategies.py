"""How a group's rows run through the model: one class per execution strategy.

Every strategy answers the same questions: its windows (``windows``: the passes that encode the
cached states a run of rows needs, a generator that yields after each pass so a scheduler can
interleave them with other work, and the chunks of those rows, one forward pass each) and the
forward pass of one chunk (``forward``: last hidden states and, per row, the sequence and position
to read the choices at). Every pass is at most ``batch_sequences`` sequences and ``batch_tokens``
padded positions (``Batching``): that is what a step costs. Which one runs depends on the adapter:

- ``FullSequence``: every row in full, left-padded: [pad][bos][head][soft prompt][tail].
- ``PrefixStates``: an input-independent prefix prompt (BBT): each candidate's [bos][prompt] is
  encoded once and reused by all its examples.
- ``TextStates`` (text_states.py): a prompt after the text: each text's [bos][text] is encoded once
  per API key and reused by every candidate, the candidates' rows packed after it (packing.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from cbpt.server.adapters import Adapter, Placement
from cbpt.server.engine.attention import attention
from cbpt.server.engine.batching import Batching
from cbpt.server.engine.kv import KVState, Layers, cache_layers, stack_states
from cbpt.server.engine.packing import (
    PackedChunk,
    PackedSequence,
    packed_batches,
    packed_inputs,
    packed_mask,
    sliding_masks,
)
from cbpt.server.engine.plan import Chunk, Row, RowChunk, length_sorted_chunks
from cbpt.server.engine.prepare import Prepared, Tokens

# hidden [sequences, width, d]; per row: its sequence and the position of its last token
Forward = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Passes = Iterator[int]  # yields the sequences of each forward pass as it completes
Window = tuple[Passes, Iterable[Chunk]]  # the passes that encode what the rows need, then their chunks


@dataclass(frozen=True)
class ModelParts:
    """The pieces of the frozen model the strategies call, looked up once."""

    embed: torch.nn.Module
    backbone: torch.nn.Module
    config: Any
    bos: Tokens
    pad_id: int
    device: torch.device
    hidden_size: int
    batching: Batching = field(default_factory=Batching)

    def run(self, **inputs: Any) -> Any:
        """The backbone's forward pass, with the attention ``batching`` asks for."""
        with attention(self.config, self.batching.grouped_attention):
            return self.backbone(**inputs)

    @property
    def state_bytes_per_token(self) -> int:
        """Bytes of one token's keys and values over all layers (46,080 for SmolLM2-135M in fp32)."""
        config = self.config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        element = next(self.embed.parameters()).element_size()
        return 2 * config.num_hidden_layers * kv_heads * head_dim * element


@dataclass(frozen=True)
class PromptSlots:
    """Where a chunk's soft prompts go, relative to the position right after the text."""

    inserted: int  # vectors inserted as tokens there (prefix and before-cue placements)
    cue_length: int
    on_cue: int  # trailing cue tokens the prompt is added onto (on-cue placement)

    @classmethod
    def of(cls, adapter: Adapter, cue_length: int) -> PromptSlots:
        if adapter.placement is Placement.ON_CUE:
            return cls(0, cue_length, min(adapter.prompt_length, cue_length))
        return cls(adapter.prompt_length, cue_length, 0)

    def span(self, start: int) -> slice:
        if self.inserted:
            return slice(start, start + self.inserted)
        return slice(start + self.cue_length - self.on_cue, start + self.cue_length)

    def apply(self, embeds: torch.Tensor, where: torch.Tensor, prompts: torch.Tensor) -> None:
        """Write inserted prompts into ``where``, or add the prompt's last rows onto the cue there."""
        width = embeds.shape[-1]
        if self.inserted:
            embeds[where] = prompts.reshape(-1, width).to(embeds.dtype)
        elif self.on_cue:
            embeds[where] += prompts[:, prompts.shape[1] - self.on_cue :].reshape(-1, width).to(embeds.dtype)


@dataclass(frozen=True)
class GroupInputs:
    """One group's requests laid end to end: candidate and example indices of ``rows`` are group-wide."""

    adapters: tuple[Adapter, ...]  # each request's own (one per entry of ``group``)
    slots: PromptSlots
    z: torch.Tensor  # [candidates, widest dimension]: each request's candidates, zero-padded
    pooled: torch.Tensor  # [examples, d]: mean input embeddings (zeros when the adapter ignores them)
    group: list[Prepared]
    rows: list[Row]
    texts: list[Tokens]  # [examples]
    after_text: bool  # the prompt sits after the text (before or on the cue)

    @property
    def adapter(self) -> Adapter:
        """The first request's adapter; the others share its placement and prompt length (``group_key``)."""
        return self.adapters[0]


class Strategy(ABC):
    """Runs the rows of one group (requests sharing adapter, mode and cue).

    ``tokens`` holds, per request of the group, the tokens spent outside the rows (cached states
    computed for it); the constructor, or ``setup`` where lengths depend on cached states, sets
    each row's ``length``. A window's chunks are planned once its passes are exhausted.
    """

    def __init__(self, parts: ModelParts, inputs: GroupInputs) -> None:
        self.parts = parts
        self.inputs = inputs
        self.adapter = inputs.adapter
        self.slots = inputs.slots
        self.tokens = [0] * len(inputs.group)

    def setup(self) -> Passes:
        """The passes that encode cached states, one yield per pass (none by default)."""
        return iter(())

    def windows(self) -> Iterator[Window]:
        """The group's rows in runs, each after the passes that encode what it needs: by default one
        run of every row, after ``setup``."""
        yield self.setup(), self.chunks()

    def chunks(self) -> Iterator[Chunk]:
        """The rows' forward passes, planned when first asked (after ``setup``'s passes); what the
        default ``windows`` runs (a strategy with windows of its own plans them there)."""
        raise NotImplementedError

    @abstractmethod
    def forward(self, chunk: Any) -> Forward:
        """The chunk's last hidden states, and each row's sequence and last position."""

    def prompts(self, chunk: Sequence[Row]) -> torch.Tensor:
        """The soft prompts [rows, t, d] of each row's candidate and example."""
        z, pooled = self.inputs.z, self.inputs.pooled
        if not self.adapter.prompt_length:
            return pooled.new_zeros(len(chunk), 0, pooled.shape[-1])
        candidates = torch.tensor([row.candidate for row in chunk], device=z.device)
        examples = torch.tensor([row.example for row in chunk], device=z.device)
        adapters = self.inputs.adapters
        if all(adapter is self.adapter for adapter in adapters):
            return self.adapter.soft_prompts(z[candidates], pooled[examples])
        owners = [adapters[row.owner] for row in chunk]
        prompts: torch.Tensor | None = None
        for adapter in dict.fromkeys(owners):  # each adapter once, its rows together
            picked = torch.tensor([i for i, owner in enumerate(owners) if owner is adapter], device=z.device)
            own = adapter.soft_prompts(z[candidates[picked], : adapter.dimension], pooled[examples[picked]])
            if prompts is None:
                prompts = own.new_empty((len(chunk), *own.shape[1:]))
            prompts[picked] = own
        assert prompts is not None  # a chunk has rows
        return prompts

    def run_packed(
        self, chunk: PackedChunk, pasts: Sequence[KVState | None], slots: PromptSlots
    ) -> tuple[Forward, Layers]:
        """One packed pass (packing.py): each sequence's state, then its head and rows; soft prompts
        where ``slots`` says. Also returns the pass's per-layer keys/values, states first."""
        parts = self.parts
        inputs = packed_inputs(chunk, parts.pad_id, slots.span, slots.inserted)
        embeds = parts.embed(inputs.ids.to(parts.device))
        rows = chunk.rows
        if rows and slots.inserted + slots.on_cue:
            slots.apply(embeds, inputs.prompt_slots.to(parts.device), self.prompts(rows))
        lengths = torch.tensor([sequence.past_length for sequence in chunk.sequences], dtype=torch.long)
        past_width = int(lengths.max())
        mask = packed_mask(inputs.segments, lengths, past_width)
        masks = sliding_masks(mask, inputs.positions, lengths, parts.config)
        # A cache without the config: plain layers, never cut to a sliding window (the masks say that).
        cache = DynamicCache(ddp_cache_data=stack_states(pasts, past_width)) if past_width else DynamicCache()
        device = parts.device
        output = parts.run(
            inputs_embeds=embeds,
            attention_mask=masks.to(device)
            if isinstance(masks, torch.Tensor)
            else {name: layer_mask.to(device) for name, layer_mask in masks.items()},
            position_ids=inputs.positions.to(device),
            cache=cache,
            use_cache=True,
        )
        forward = (output.last_hidden_state, inputs.row_sequence, inputs.row_end)
        return forward, cache_layers(output)


class FullSequence(Strategy):
    """Every row in full, left-padded so that each ends at the last column."""

    def __init__(self, parts: ModelParts, inputs: GroupInputs) -> None:
        super().__init__(parts, inputs)
        for row in inputs.rows:
            row.length = len(parts.bos) + self.slots.inserted + len(row.tokens)
            row.length += len(inputs.texts[row.example]) if inputs.after_text else 0

    def chunks(self) -> Iterator[Chunk]:
        batching = self.parts.batching
        planned = length_sorted_chunks(
            self.inputs.rows,
            batching.batch_sequences,
            batching.batch_tokens,
            sort=batching.sort_by_length,
        )
        yield from map(RowChunk, planned)

    def forward(self, chunk: RowChunk) -> Forward:
        """[pad][bos][head][soft prompt][tail]; the head is the text when the prompt comes after it."""
        parts, slots, rows = self.parts, self.slots, chunk.rows
        prompts = self.prompts(rows)
        width = max(row.length for row in rows)
        ids = torch.full((len(rows), width), parts.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        soft = torch.zeros((len(rows), width), dtype=torch.bool)
        for index, row in enumerate(rows):
            head = self.inputs.texts[row.example] if self.inputs.after_text else ()
            start = width - row.length
            before = parts.bos + head
            mask[index, start:] = 1
            ids[index, start : start + len(before)] = torch.tensor(before, dtype=torch.long)
            prompt_at = start + len(before)
            soft[index, slots.span(prompt_at)] = True
            ids[index, prompt_at + slots.inserted :] = torch.tensor(row.tokens, dtype=torch.long)
        ids, mask, soft = ids.to(parts.device), mask.to(parts.device), soft.to(parts.device)
        embeds = parts.embed(ids)
        slots.apply(embeds, soft, prompts)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        output = parts.run(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False)
        ends = torch.full((len(rows),), width - 1, dtype=torch.long)
        return output.last_hidden_state, torch.arange(len(rows)), ends


class PrefixStates(Strategy):
    """Each candidate's [bos][soft prompt] encoded once, in batched passes, reused by its examples: one
    sequence per row after its candidate's prefix (rows are long, so packing them would waste attention)."""

    def __init__(self, parts: ModelParts, inputs: GroupInputs) -> None:
        super().__init__(parts, inputs)
        self.prefixes: list[KVState] = []

    def setup(self) -> Passes:
        parts, z = self.parts, self.inputs.z
        bos = torch.tensor(parts.bos, dtype=torch.long, device=parts.device)
        for start in range(0, len(z), parts.batching.batch_sequences):
            batch = z[start : start + parts.batching.batch_sequences]
            prompts = self.adapter.soft_prompts(batch, batch.new_zeros(len(batch), parts.hidden_size))
            embeds = torch.cat([parts.embed(bos).expand(len(batch), -1, -1), prompts.to(batch.dtype)], dim=1)
            positions = torch.arange(embeds.shape[1], device=parts.device).expand(len(batch), -1)
            output = parts.run(inputs_embeds=embeds, position_ids=positions, use_cache=True)
            layers = cache_layers(output)
            self.prefixes += [KVState(tuple((k[i], v[i]) for k, v in layers)) for i in range(len(batch))]
            yield len(batch)
        for owner, prepared in enumerate(self.inputs.group):
            self.tokens[owner] = len(prepared.candidates) * self.prefixes[0].length
        for row in self.inputs.rows:
            row.length = len(row.tokens)

    def chunks(self) -> Iterator[PackedChunk]:
        batching, length = self.parts.batching, self.prefixes[0].length
        sequences = [PackedSequence(row.candidate, length, (), [row]) for row in self.inputs.rows]
        yield from packed_batches(sequences, batching)

    def forward(self, chunk: PackedChunk) -> Forward:
        pasts = [self.prefixes[sequence.key] for sequence in chunk.sequences]
        return self.run_packed(chunk, pasts, PromptSlots(0, 0, 0))[0]
