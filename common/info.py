"""The server's self-description as plain values, one type each for both sides.

The server's engine describes its adapters as ``AdapterInfo`` and its serde puts them on the wire;
``cbpt.client.rpc.serde`` builds the same types back from it, so callers never touch protobuf types.
Nothing here imports protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass

from cbpt.common.limits import Limits


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
class ServerInfo:
    """What a server runs; ``model_fingerprint`` binds a tuned vector to the model it was tuned on."""

    model_id: str
    model_fingerprint: str
    hidden_size: int
    adapters: tuple[AdapterInfo, ...]
    limits: Limits  # as stated: a 0 means not stated (``Limits.stated``)
    server_version: str

    def adapter(self, name: str) -> AdapterInfo:
        """The adapter called ``name``; a KeyError lists the known names."""
        for adapter in self.adapters:
            if adapter.name == name:
                return adapter
        known = ", ".join(a.name for a in self.adapters) or "none"
        raise KeyError(f"unknown adapter {name!r}; known: {known}")
