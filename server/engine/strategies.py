"""How a group's rows run through the model: one class per execution strategy.

Every strategy answers the same questions: its windows (``windows``: the passes that encode the
cached states a run of rows needs, a generator that yields after each pass so a scheduler can
interleave them with other work, and those rows), how wide a row is for planning chunks
(``width``), and the forward pass of one chunk (``forward``: last hidden states and, per row, the
position to read the choices at). Every pass, of encoding or of a chunk, is at most
``batch_sequences`` sequences and ``batch_tokens`` padded tokens: that is what a step costs.
Which one runs depends on the adapter alone:

- ``FullSequence``: every row in full, left-padded: [pad][bos][head][soft prompt][tail].
- ``PrefixStates``: an input-independent prefix prompt (BBT): each candidate's [bos][prompt] is
  encoded once and reused by all its examples.
- ``TextStates``: a prompt after the text: each text's [bos][text] is encoded once per API key
  (cached across requests) and reused by every candidate. A job holds the states of one window of
  texts at a time, sized to what the engine's ``StateBudget`` has free: its texts are encoded,
  every candidate runs over them, they are let go, and the next window follows. Merged requests'
  texts are encoded in shared passes, each state computed and cached under its own request's
  scope, never another's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cbpt.server.adapters import Adapter, Placement
from cbpt.server.engine.kv import (
    KVState,
    StateBudget,
    TextStateCache,
    cache_layers,
    encode_left_padded,
    forward_after,
    split_states,
    stack_left_padded,
)
from cbpt.server.engine.plan import Row, padded_batches
from cbpt.server.engine.prepare import Prepared, Tokens

Forward = tuple[torch.Tensor, torch.Tensor]  # hidden [rows, width, d], read positions [rows]
Passes = Iterator[int]  # yields the sequences of each forward pass as it completes
Window = tuple[Passes, list[Row]]  # the passes that encode what the rows need, then those rows
Key = tuple[str, Tokens]  # a text state's scope (API key id) and tokens


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
    batch_sequences: int
    batch_tokens: int = 8192

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

    ``tokens`` holds, per request of the group, the tokens spent outside chunks (cached states
    computed for it); the constructor, or ``setup`` where lengths depend on cached states, sets
    each row's ``length``. ``width`` and ``forward`` are valid for a window's rows once its passes
    are exhausted.
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
        yield self.setup(), self.inputs.rows

    @abstractmethod
    def width(self, row: Row) -> int:
        """Positions the row occupies in a chunk, cached ones included: what chunks are sorted by."""

    @abstractmethod
    def forward(self, chunk: list[Row]) -> Forward:
        """The chunk's last hidden states and the position of each row's last token."""

    def prompts(self, chunk: list[Row]) -> torch.Tensor:
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

    def forward_after_states(
        self, chunk: list[Row], pasts: Sequence[KVState], prompts: torch.Tensor | None, slots: PromptSlots
    ) -> Forward:
        """Each row's cached past (left-padded), then [soft prompt][tokens] right-padded after it."""
        parts = self.parts
        width = max(row.length for row in chunk)
        count = len(chunk)
        past, past_mask = stack_left_padded(pasts, max(state.length for state in pasts))
        new_mask = torch.zeros((count, width), dtype=torch.long)
        ids = torch.full((count, width), parts.pad_id, dtype=torch.long)
        lengths = torch.tensor([state.length for state in pasts], dtype=torch.long)
        for index, row in enumerate(chunk):
            new_mask[index, : row.length] = 1
            ids[index, slots.inserted : row.length] = torch.tensor(row.tokens, dtype=torch.long)
        embeds = parts.embed(ids.to(parts.device))
        if prompts is not None:
            soft = torch.zeros((count, width), dtype=torch.bool)
            soft[:, slots.span(0)] = True
            slots.apply(embeds, soft.to(parts.device), prompts)
        positions = (lengths[:, None] + torch.arange(width)[None, :]).to(parts.device)
        hidden = forward_after(
            parts.backbone, parts.config, past, past_mask, embeds, new_mask.to(parts.device), positions
        )
        ends = torch.tensor([row.length - 1 for row in chunk], dtype=torch.long)
        return hidden, ends


class FullSequence(Strategy):
    """Every row in full, left-padded so that each ends at the last column."""

    def __init__(self, parts: ModelParts, inputs: GroupInputs) -> None:
        super().__init__(parts, inputs)
        for row in inputs.rows:
            row.length = len(parts.bos) + self.slots.inserted + len(row.tokens)
            row.length += len(inputs.texts[row.example]) if inputs.after_text else 0

    def width(self, row: Row) -> int:
        return row.length

    def forward(self, chunk: list[Row]) -> Forward:
        """[pad][bos][head][soft prompt][tail]; the head is the text when the prompt comes after it."""
        parts, slots = self.parts, self.slots
        prompts = self.prompts(chunk)
        width = max(row.length for row in chunk)
        ids = torch.full((len(chunk), width), parts.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        soft = torch.zeros((len(chunk), width), dtype=torch.bool)
        for index, row in enumerate(chunk):
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
        output = parts.backbone(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
        )
        return output.last_hidden_state, torch.full((len(chunk),), width - 1, dtype=torch.long)


class PrefixStates(Strategy):
    """Each candidate's [bos][soft prompt] encoded once, in batched passes, reused by its examples."""

    def __init__(self, parts: ModelParts, inputs: GroupInputs) -> None:
        super().__init__(parts, inputs)
        self.prefixes: list[KVState] = []

    def setup(self) -> Passes:
        parts, z = self.parts, self.inputs.z
        bos = torch.tensor(parts.bos, dtype=torch.long, device=parts.device)
        for start in range(0, len(z), parts.batch_sequences):
            batch = z[start : start + parts.batch_sequences]
            prompts = self.adapter.soft_prompts(batch, batch.new_zeros(len(batch), parts.hidden_size))
            embeds = torch.cat([parts.embed(bos).expand(len(batch), -1, -1), prompts.to(batch.dtype)], dim=1)
            positions = torch.arange(embeds.shape[1], device=parts.device).expand(len(batch), -1)
            output = parts.backbone(inputs_embeds=embeds, position_ids=positions, use_cache=True)
            layers = cache_layers(output)
            self.prefixes += [KVState(tuple((k[i], v[i]) for k, v in layers)) for i in range(len(batch))]
            yield len(batch)
        for owner, prepared in enumerate(self.inputs.group):
            self.tokens[owner] = len(prepared.candidates) * self.prefixes[0].length
        for row in self.inputs.rows:
            row.length = len(row.tokens)

    def width(self, row: Row) -> int:
        return row.length + self.prefixes[0].length

    def forward(self, chunk: list[Row]) -> Forward:
        pasts = [self.prefixes[row.candidate] for row in chunk]
        return self.forward_after_states(chunk, pasts, None, PromptSlots(0, 0, 0))


class TextStates(Strategy):
    """Each text's [bos][text] from its scope's cache or shared batched passes; the prompt and cue
    after it. Texts go in windows of what ``budget`` has free (at least one text each)."""

    def __init__(
        self, parts: ModelParts, inputs: GroupInputs, cache: TextStateCache, budget: StateBudget | None = None
    ) -> None:
        super().__init__(parts, inputs)
        self.cache = cache
        self.budget = budget if budget is not None else StateBudget()
        self.states: dict[int, KVState] = {}  # the current window's, by group-wide example
        for row in inputs.rows:
            row.length = self.slots.inserted + len(row.tokens)

    def windows(self) -> Iterator[Window]:
        parts, group = self.parts, self.inputs.group
        # (scope, [bos][text]) of every example, group-wide; one key is one state, its scope's own.
        keys = [(prepared.scope, parts.bos + text) for prepared in group for text in prepared.encoded.texts]
        owners = [owner for owner, prepared in enumerate(group) for _ in prepared.encoded.texts]
        examples: dict[Key, list[int]] = {}
        for example in sorted(range(len(keys)), key=lambda e: (len(keys[e][1]), keys[e][1], keys[e][0])):
            examples.setdefault(keys[example], []).append(example)
        plan_order: dict[int, list[int]] = {}
        for index, row in enumerate(self.inputs.rows):
            plan_order.setdefault(row.example, []).append(index)
        pending, per_token = list(examples), parts.state_bytes_per_token
        while pending:  # shortest texts first, as chunks are sorted; each window sized to what is free
            free, held, window = self.budget.free(), 0, list[Key]()
            while pending and (not window or held + len(pending[0][1]) * per_token <= free):
                window.append(pending.pop(0))
                held += len(window[-1][1]) * per_token
            self.budget.take(held)
            try:
                indices = sorted(
                    i for key in window for example in examples[key] for i in plan_order[example]
                )
                firsts = {key: owners[examples[key][0]] for key in window}
                yield self._encode(firsts, examples), [self.inputs.rows[i] for i in indices]
            finally:  # the window's rows are done, or the job stopped
                self.states = {}
                self.budget.give(held)

    def _encode(self, firsts: dict[Key, int], examples: dict[Key, list[int]]) -> Passes:
        """The window's states, from the cache or computed in shared passes; each charged to the first
        request of its scope that has it, and cached under that scope."""
        parts = self.parts
        self.states = {}  # the previous window's states go before this one's are computed
        found = {key: self.cache.get(*key) for key in firsts}
        missing = [key for key, state in found.items() if state is None]  # length-sorted already
        for batch in padded_batches(
            missing, lambda key: len(key[1]), parts.batch_sequences, parts.batch_tokens
        ):
            layers, mask = encode_left_padded(
                parts.backbone, [key[1] for key in batch], parts.pad_id, parts.device
            )
            for key, state in zip(batch, split_states(layers, mask), strict=True):
                found[key] = state
                self.cache.put(key[0], key[1], state)
                self.tokens[firsts[key]] += len(key[1])
            del layers, mask
            yield len(batch)
        for key, state in found.items():
            assert state is not None  # every missing state was computed above
            for example in examples[key]:
                self.states[example] = state

    def width(self, row: Row) -> int:
        return row.length + self.states[row.example].length

    def forward(self, chunk: list[Row]) -> Forward:
        pasts = [self.states[row.example] for row in chunk]
        return self.forward_after_states(chunk, pasts, self.prompts(chunk), self.slots)
