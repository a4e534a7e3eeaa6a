"""The server's self-description as plain values, one type each for both sides.

The server's engine describes its adapters as ``AdapterInfo`` and its serde puts them on the wire;
``cbpt.client.rpc.serde`` builds the same types back from it, so callers never touch protobuf types.
Nothing here imports protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdapterInfo:
    """One adapter the server serves; ``dimension`` is the length of a candidate vector."""

    name: str
    method: str
    dimension: int
    prompt_length: int
    domain: str
    description: str
    placement: str = ""  # where the soft prompt goes: "prefix", "before_cue" or "on_cue" ("" if unstated)


@dataclass(frozen=True)
class ServerLimits:
    """Request limits the server states; a 0 from the wire means "not stated", read as unlimited."""

    max_candidates: int = 0
    max_examples: int = 0
    max_choices: int = 0
    max_text_tokens: int = 0
    max_text_chars: int = 0
    max_choice_tokens: int = 0
    max_choice_chars: int = 0
    max_sequences: int = 0
    max_message_bytes: int = 0


@dataclass(frozen=True)
class ServerInfo:
    """What a server runs; ``model_fingerprint`` binds a tuned vector to the model it was tuned on."""

    model_id: str
    model_fingerprint: str
    hidden_size: int
    adapters: tuple[AdapterInfo, ...]
    limits: ServerLimits
    server_version: str

    def adapter(self, name: str) -> AdapterInfo:
        """The adapter called ``name``; a KeyError lists the known names."""
        for adapter in self.adapters:
            if adapter.name == name:
                return adapter
        known = ", ".join(a.name for a in self.adapters) or "none"
        raise KeyError(f"unknown adapter {name!r}; known: {known}")
