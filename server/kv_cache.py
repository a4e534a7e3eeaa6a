"""An in-memory, per-key bounded cache of each input text's attention keys and values.

With the soft prompt placed after the input text, the text's keys and values
do not depend on the candidate, so each text is encoded once and reused by
every candidate of every generation. Entries live only in memory, are scoped
to one API key (keys never share entries), and are evicted least recently
used once a scope's byte budget or the number of scopes is exceeded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


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


def encode_left_padded(
    backbone: torch.nn.Module, sequences: list[tuple[int, ...]], pad_id: int, device: torch.device
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """One left-padded pass over token sequences: per-layer (keys, values) [batch, kv_heads, width, head_dim]
    and the attention mask [batch, width]. Used by the engine and by white-box training alike."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for index, sequence in enumerate(sequences):
        ids[index, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
        mask[index, width - len(sequence) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    output = backbone(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    return [(layer.keys, layer.values) for layer in output.past_key_values.layers], mask


class TextStateCache:
    def __init__(self, max_bytes_per_scope: int = 256 << 20, max_scopes: int = 8) -> None:
        self.max_bytes_per_scope = max_bytes_per_scope
        self.max_scopes = max_scopes
        self._scopes: OrderedDict[str, OrderedDict[tuple[int, ...], KVState]] = OrderedDict()
        self._bytes: dict[str, int] = {}
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
        if state.nbytes > self.max_bytes_per_scope:
            return
        with self._lock:
            entries = self._scopes.setdefault(scope, OrderedDict())
            self._scopes.move_to_end(scope)
            if tokens in entries:
                self._bytes[scope] -= entries.pop(tokens).nbytes
            entries[tokens] = state
            self._bytes[scope] = self._bytes.get(scope, 0) + state.nbytes
            while self._bytes[scope] > self.max_bytes_per_scope:
                _, evicted = entries.popitem(last=False)
                self._bytes[scope] -= evicted.nbytes
            while len(self._scopes) > self.max_scopes:
                dropped, _ = self._scopes.popitem(last=False)
                del self._bytes[dropped]

    def drop(self, scope: str) -> None:
        """Forget everything cached for one key (its session ended)."""
        with self._lock:
            self._scopes.pop(scope, None)
            self._bytes.pop(scope, None)

    def scope_bytes(self, scope: str) -> int:
        with self._lock:
            return self._bytes.get(scope, 0)

    def scope_entries(self, scope: str) -> int:
        with self._lock:
            return len(self._scopes.get(scope, ()))
