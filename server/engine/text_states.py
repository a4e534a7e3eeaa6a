"""The strategy of prompts placed after the text: each text encoded once per API key, every candidate
packed after it.

Each text's [bos][text] keys and values come from its scope's cache (``TextStateCache``), or from
the pass that runs the text's first rows (its state is taken from that pass and cached), or, with
``encode_with_rows`` off, from shared passes of their own first. A text's rows (every candidate, and
every choice in full-choice mode) then run ``pack_rows`` to a sequence after its state
(packing.py). A job holds the states of one window of texts at a time, sized to what the engine's
``StateBudget`` has free: the window's texts are encoded, every row runs over them, they are let
go, and the next window follows. Merged requests' texts are encoded in shared passes, each state
computed and cached under its own request's scope, never another's.
"""

from __future__ import annotations

from collections.abc import Iterator

from cbpt.server.engine.kv import (
    KVState,
    StateBudget,
    TextStateCache,
    encode_left_padded,
    split_states,
    take_states,
)
from cbpt.server.engine.packing import PackedChunk, PackedSequence, packed_batches
from cbpt.server.engine.plan import Row, padded_batches
from cbpt.server.engine.prepare import Tokens
from cbpt.server.engine.strategies import Forward, GroupInputs, ModelParts, Passes, Strategy, Window

Key = tuple[str, Tokens]  # a text state's scope (API key id) and tokens


class TextStates(Strategy):
    """Each text's [bos][text] from its scope's cache or encoded here; the rows' prompts and cues packed
    after it. Texts go in windows of what ``budget`` has free (at least one text each)."""

    def __init__(
        self, parts: ModelParts, inputs: GroupInputs, cache: TextStateCache, budget: StateBudget | None = None
    ) -> None:
        super().__init__(parts, inputs)
        self.cache = cache
        self.budget = budget if budget is not None else StateBudget()
        self.states: dict[Key, KVState] = {}  # the current window's
        self.firsts: dict[Key, int] = {}  # the request each of the window's states is charged to
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
        while pending:  # shortest texts first; each window sized to what is free
            free, held, window = self.budget.free(), 0, list[Key]()
            while pending and (not window or held + len(pending[0][1]) * per_token <= free):
                window.append(pending.pop(0))
                held += len(window[-1][1]) * per_token
            self.budget.take(held)
            try:
                self.firsts = {key: owners[examples[key][0]] for key in window}
                self.states = {}  # the previous window's states go before this one's are found
                self.states = {key: state for key in window if (state := self.cache.get(*key)) is not None}
                rows = {
                    key: [self.inputs.rows[i] for example in examples[key] for i in plan_order[example]]
                    for key in window
                }
                yield self._encode(window), self._chunks(rows)
            finally:  # the window's rows are done, or the job stopped
                self.states = {}
                self.budget.give(held)

    def _encode(self, window: list[Key]) -> Passes:
        """With ``encode_with_rows`` off: the window's missing states in shared passes of their own."""
        parts = self.parts
        if parts.batching.encode_with_rows:
            return
        missing = [key for key in window if key not in self.states]  # length-sorted already
        batching = parts.batching
        for batch in padded_batches(
            missing, lambda key: len(key[1]), batching.batch_sequences, batching.batch_tokens
        ):
            layers, mask = encode_left_padded(
                parts.run, [key[1] for key in batch], parts.pad_id, parts.device
            )
            for key, state in zip(batch, split_states(layers, mask), strict=True):
                self._keep(key, state)
            del layers, mask
            yield len(batch)

    def _chunks(self, rows: dict[Key, list[Row]]) -> Iterator[PackedChunk]:
        """Each text's rows ``pack_rows`` to a sequence after its state; a text not cached runs at the
        head of its first sequence, and its other sequences wait for the passes after it."""
        batching = self.parts.batching
        ready: list[PackedSequence] = []
        waiting: list[PackedSequence] = []
        for key, own in rows.items():
            packs = [own[i : i + batching.pack_rows] for i in range(0, len(own), batching.pack_rows)]
            fresh = key not in self.states
            ready.append(PackedSequence(key, 0 if fresh else len(key[1]), key[1] if fresh else (), packs[0]))
            (waiting if fresh else ready).extend(PackedSequence(key, len(key[1]), (), p) for p in packs[1:])
        for sequences in (ready, waiting):
            yield from packed_batches(sequences, batching)

    def forward(self, chunk: PackedChunk) -> Forward:
        pasts = [None if sequence.head else self.states[sequence.key] for sequence in chunk.sequences]
        forward, layers = self.run_packed(chunk, pasts, self.slots)
        heads = [(index, s) for index, s in enumerate(chunk.sequences) if s.head]
        if heads:  # the heads' states, after the (left-padded) cached part of the pass
            offset = max(sequence.past_length for sequence in chunk.sequences)
            spans = [(index, offset, len(sequence.head)) for index, sequence in heads]
            for (_, sequence), state in zip(heads, take_states(layers, spans), strict=True):
                self._keep(sequence.key, state)
        return forward

    def _keep(self, key: Key, state: KVState) -> None:
        """A state computed for this window: held for its rows, cached under its scope, charged once."""
        self.states[key] = state
        self.cache.put(key[0], key[1], state)
        self.tokens[self.firsts[key]] += len(key[1])
