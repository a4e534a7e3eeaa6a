"""Plain mirrors of the server's self-description, so callers never touch protobuf types."""

from __future__ import annotations

from dataclasses import dataclass, fields

from cbpt.v1 import tuning_pb2


@dataclass(frozen=True)
class AdapterInfo:
    """One adapter the server serves; ``dimension`` is the length of a candidate vector."""

    name: str
    method: str
    dimension: int
    prompt_length: int
    domain: str
    description: str


@dataclass(frozen=True)
class ServerLimits:
    """Request limits the server states; a 0 from the wire means "not stated", read as unlimited."""

    max_candidates: int = 0
    max_examples: int = 0
    max_choices: int = 0
    max_text_tokens: int = 0
    max_text_chars: int = 0
    max_choice_tokens: int = 0
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

    @classmethod
    def from_proto(cls, message: tuning_pb2.ServerInfo) -> ServerInfo:
        adapters = tuple(
            AdapterInfo(
                name=a.name,
                method=a.method,
                dimension=int(a.dimension),
                prompt_length=int(a.prompt_length),
                domain=a.domain,
                description=a.description,
            )
            for a in message.adapters
        )
        limits = ServerLimits(**{f.name: int(getattr(message.limits, f.name)) for f in fields(ServerLimits)})
        return cls(
            model_id=message.model_id,
            model_fingerprint=message.model_fingerprint,
            hidden_size=int(message.hidden_size),
            adapters=adapters,
            limits=limits,
            server_version=message.server_version,
        )
