"""What crosses the hop between the front and a replica besides the engine's own request and result.

Plain frozen values, free of Ray and torch: the server's errors take constructor arguments that
pickling across processes does not restore, so a replica returns a ``Refusal`` (any server error,
by its class name and its ``wire_args``, the error table's wire form) and the front raises the same
error again, which ``status.py`` maps as it maps any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from cbpt.server.engine.types import EngineInfo, ScoreResult
from cbpt.server.errors import ServerError, WireValue


@dataclass(frozen=True)
class Refusal:
    """A server error the replica raised, as plain values: its class and constructor arguments."""

    error_class: str
    args: tuple[WireValue, ...]

    @classmethod
    def of(cls, error: ServerError) -> Refusal:
        return cls(type(error).__name__, error.wire_args())

    def error(self) -> ServerError:
        return ServerError.named(self.error_class)(*self.args)


@dataclass(frozen=True)
class ReplicaDescription:
    info: EngineInfo
    on_demand: frozenset[str]  # adapters loaded per replica when named: route them by name


@dataclass(frozen=True)
class ReplicaStats:
    """What one replica did, for tests, benchmarks and operators: counts, never inputs."""

    replica: str  # the Ray actor's name
    engine_calls: int
    requests: int
    resident_generators: tuple[str, ...]
    generator_loads: int
    cached_texts: dict[str, int]  # per scope (API key id)
    cancelled: int = 0  # calls its fronts cancelled (client gone, deadline, shutdown)


@dataclass(frozen=True)
class Served:
    """A replica's answer to one request: the outcome, which replica gave it, and that replica's
    running counts (so the front knows every replica's load without asking each one)."""

    outcome: ScoreResult | Refusal
    replica: str
    engine_calls: int
    requests: int
