"""Keys and values of cached sequences, and the one forward pass that runs after them.

With the soft prompt placed after the input text, the text's keys and values do not depend on
the candidate, so each text is encoded once and reused by every candidate of every generation;
with an input-independent prefix prompt (BBT), each candidate's prompt is encoded once and reused
by all its examples. ``forward_after`` runs new positions after such states; it is plain autograd
code, so serving runs it under ``inference_mode`` and generator training with gradients.

The text-state cache lives only in memory, is scoped to one API key (keys never share entries),
and evicts least recently used entries once a scope's byte budget, the total budget across keys
or the number of scopes is exceeded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

Layers = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class KVState:
    """Per-layer keys and values [kv_heads, length, head_dim] of one token sequence (a text, or a
    candidate's [bos][soft prompt] prefix), without padding."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def length(self) -> int:
        return int(self.layers[0][0].shape[1])

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


def cache_layers(output: Any) -> Layers:
    """Per-layer (keys, values) [batch, kv_heads, width, head_dim] of a forward run with use_cache."""
    return [(layer.keys, layer.values) for layer in output.cache.layers]


def encode_left_padded(
    backbone: Callable[..., Any], sequences: Sequence[tuple[int, ...]], pad_id: int, device: torch.device
) -> tuple[Layers, torch.Tensor]:
    """One left-padded pass over token sequences: per-layer (keys, values) [batch, kv_heads, width, head_dim]
    and the attention mask [batch, width]."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for index, sequence in enumerate(sequences):
        ids[index, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
        mask[index, width - len(sequence) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    output = backbone(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    return cache_layers(output), mask


def split_states(layers: Layers, mask: torch.Tensor) -> list[KVState]:
    """One unpadded KVState per row of a left-padded batch (copies, so the batch can be freed)."""
    width = mask.shape[1]
    lengths = mask.sum(-1).tolist()
    return [
        KVState(tuple((k[i, :, width - n :].clone(), v[i, :, width - n :].clone()) for k, v in layers))
        for i, n in enumerate(lengths)
    ]


def take_states(layers: Layers, spans: Sequence[tuple[int, int, int]]) -> list[KVState]:
    """One KVState per (sequence, start, length) span of a pass's per-layer keys/values (copies)."""
    return [
        KVState(
            tuple((k[i, :, start : start + n].clone(), v[i, :, start : start + n].clone()) for k, v in layers)
        )
        for i, start, n in spans
    ]


def stack_states(states: Sequence[KVState | None], width: int) -> Layers:
    """Per-layer keys/values [len(states), kv_heads, width, head_dim], each state left-padded (zeros for
    None)."""
    first = next(state for state in states if state is not None).layers
    layers: Layers = []
    for layer in range(len(first)):
        stacked = []
        for part in (0, 1):
            like = first[layer][part]
            out = like.new_zeros(len(states), like.shape[0], width, like.shape[2])
            for index, state in enumerate(states):
                if state is not None:
                    out[index, :, width - state.length :] = state.layers[layer][part]
            stacked.append(out)
        layers.append((stacked[0], stacked[1]))
    return layers


def forward_after(
    backbone: torch.nn.Module,
    config: Any,
    past: Layers,
    past_mask: torch.Tensor,
    embeds: torch.Tensor,
    new_mask: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Last hidden states [rows, new, hidden] of ``embeds`` run after cached keys/values ``past``.

    ``past_mask`` [rows, past] marks real cached positions (left padding), ``new_mask`` [rows, new]
    the real new ones (right padding), ``positions`` [rows, new] their position ids. A fresh cache
    object each call: the forward appends to it, and the stored states stay as they are.
    """
    cache = DynamicCache(ddp_cache_data=list(past), config=config)
    mask = torch.cat([past_mask.to(new_mask.device), new_mask], dim=1)
    output = backbone(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
    )
    return output.last_hidden_state


class TextStateCache:
    """Text states by scope (API key): at most ``max_bytes_per_scope`` for one key, ``max_bytes`` for
    all keys together and ``max_scopes`` keys. Past a scope's bound its least recently used entries
    go; past the total bound, the least recently used entries of the largest scope go first, so
    a heavy key gives up its own states before it can push out everyone else's."""

    def __init__(
        self, max_bytes_per_scope: int = 256 << 20, max_scopes: int = 8, max_bytes: int = 1 << 30
    ) -> None:
        self.max_bytes_per_scope = max_bytes_per_scope
        self.max_scopes = max_scopes
        self.max_bytes = max_bytes
        self._scopes: OrderedDict[str, OrderedDict[tuple[int, ...], KVState]] = OrderedDict()
        self._bytes: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def get(self, scope: str, tokens: tuple[int, ...]) -> KVState | None:
        with self._lock:
            entries = self._scopes.get(scope)
            if entries is None or tokens not in entries:
                return None
            self._scopes.move_to_end(scope)
            entries.move_to_end(tokens)
            return entries[tokens]

    def put(self, scope: str, tokens: tuple[int, ...], state: KVState) -> None:
        if state.nbytes > min(self.max_bytes_per_scope, self.max_bytes):
            return
        with self._lock:
            entries = self._scopes.setdefault(scope, OrderedDict())
            self._scopes.move_to_end(scope)
            if tokens in entries:
                self._forget(scope, entries.pop(tokens))
            entries[tokens] = state
            self._bytes[scope] = self._bytes.get(scope, 0) + state.nbytes
            self._total += state.nbytes
            while self._bytes[scope] > self.max_bytes_per_scope:
                self._forget(scope, entries.popitem(last=False)[1])
            while len(self._scopes) > self.max_scopes:
                dropped, _ = self._scopes.popitem(last=False)
                self._total -= self._bytes.pop(dropped)
            while self._total > self.max_bytes:
                largest = max(self._scopes, key=lambda name: self._bytes[name])  # earliest used on ties
                self._forget(largest, self._scopes[largest].popitem(last=False)[1])

    def _forget(self, scope: str, state: KVState) -> None:
        self._bytes[scope] -= state.nbytes
        self._total -= state.nbytes

    def drop(self, scope: str) -> None:
        """Forget everything cached for one key (its session ended)."""
        with self._lock:
            self._scopes.pop(scope, None)
            self._total -= self._bytes.pop(scope, 0)

    @property
    def total_bytes(self) -> int:
        """Bytes held for all keys together: what memory metrics report."""
        with self._lock:
            return self._total

    def scope_bytes(self, scope: str) -> int:
        with self._lock:
            return self._bytes.get(scope, 0)

    def scope_entries(self, scope: str) -> int:
        with self._lock:
            return len(self._scopes.get(scope, ()))

    def entries_per_scope(self) -> dict[str, int]:
        """Cached texts per scope (API key id): what a replica reports, never the texts themselves."""
        with self._lock:
            return {scope: len(entries) for scope, entries in self._scopes.items()}


class StateBudget:
    """Bytes of text states the running jobs may hold at once, all together (``--job-state-mb``).

    A job takes its next window of texts from what is free and gives it back when the window's rows
    are done (or the job stops). A window always holds at least one text, so a job never waits:
    with many jobs competing the total may pass the budget by at most one text per job.
    """

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self.held = 0
        self.peak = 0  # the most held at once: what the memory test and metrics read
        self._lock = threading.Lock()

    def free(self) -> int:
        with self._lock:
            return max(0, self.max_bytes - self.held)

    def take(self, size: int) -> None:
        with self._lock:
            self.held += size
            self.peak = max(self.peak, self.held)

    def give(self, size: int) -> None:
        with self._lock:
            self.held -= size
