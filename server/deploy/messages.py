"""What crosses the hop between the front and a replica besides the engine's own request and result.

Plain frozen values, free of Ray and torch: the server's errors take constructor arguments that
pickling across processes does not restore, so a replica returns a ``Refusal`` and the front
raises the same error again, which ``status.py`` maps as it maps any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from cbpt.server.engine.types import EngineInfo, ScoreResult
from cbpt.server.errors import InvalidRequest, QuotaExceeded, ServerBusy, ServerError


@dataclass(frozen=True)
class Refusal:
    """A request the replica refused: ``field`` set is an ``InvalidRequest``, else ``ServerBusy``."""

    message: str
    field: str | None = None
    retry_after: float = 0.0

    @classmethod
    def of(cls, error: InvalidRequest | QuotaExceeded) -> Refusal:
        if isinstance(error, InvalidRequest):
            return cls(error.description, field=error.field)
        return cls(str(error), retry_after=error.retry_after)

    def error(self) -> ServerError:
        if self.field is not None:
            return InvalidRequest(self.field, self.message)
        return ServerBusy(self.message, self.retry_after)


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
