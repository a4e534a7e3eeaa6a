"""The server's errors, all in one place, each with its line of the error table.

Each class states in its ``class`` line how it leaves the server: ``status_code``, the gRPC status
code a client sees (``front/status.py`` adds the rich details), and ``refusal_reason``, the label it
is counted under in ``cbpt_refusals_total`` (``None``: not a refusal). ``wire_args()`` is its third
column, the constructor arguments that rebuild it after the hop to a Ray replica
(``deploy/messages.Refusal``). A subclass that omits either keyword fails at import time, and
``tests/server/test_error_table.py`` round-trips every class, so a forgotten entry fails loudly.

Each is also a built-in (``InvalidRequest`` is a ``ValueError``), as nevergrad does, so callers
may catch either.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from cbpt.common.errors import CbptError, CbptWarning

# The gRPC status codes the server answers with (names of ``google.rpc.Code``).
StatusCodeName = Literal[
    "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "UNAUTHENTICATED", "CANCELLED", "INTERNAL"
]
WireValue = str | int | float | tuple[str, ...]


class ServerError(CbptError):
    """Base class of errors the server raises on purpose; anything else is answered INTERNAL."""

    status_code: ClassVar[StatusCodeName] = "INTERNAL"
    refusal_reason: ClassVar[str | None] = None
    retry_after: float | None = None  # seconds; set by the retryable errors (RetryInfo)
    _by_name: ClassVar[dict[str, type[ServerError]]] = {}

    def __init_subclass__(
        cls, *, status_code: StatusCodeName, refusal_reason: str | None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.status_code = status_code
        cls.refusal_reason = refusal_reason
        ServerError._by_name[cls.__name__] = cls

    def wire_args(self) -> tuple[WireValue, ...]:
        """The constructor arguments that rebuild this error on the far side of a process hop: its
        message, and its retry delay if it has one; a class with other arguments says so."""
        return (str(self),) if self.retry_after is None else (str(self), self.retry_after)

    @staticmethod
    def named(name: str) -> type[ServerError]:
        """The error class called ``name`` (a ``Refusal`` names its class; both sides run this module)."""
        return ServerError._by_name[name]


class ServerWarning(CbptWarning):
    """Something the operator should know that does not stop the server."""


# -- a request's fault: INVALID_ARGUMENT ----------------------------------------------------------
class InvalidRequest(ServerError, ValueError, status_code="INVALID_ARGUMENT", refusal_reason="invalid"):
    """A request that breaks the contract; ``field`` names the offending field."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description

    @classmethod
    def over_limit(cls, field: str, count: int, unit: str, limit: int) -> InvalidRequest:
        """The one wording of every count or length beyond a limit: ``texts[3]: 61 tokens exceed the
        limit of 48``, whether the door or the engine finds it."""
        return cls(field, f"{count} {unit} exceed the limit of {limit}")

    def wire_args(self) -> tuple[WireValue, ...]:
        return (self.field, self.description)


class MalformedRequest(InvalidRequest, status_code="INVALID_ARGUMENT", refusal_reason="invalid"):
    """Request bytes that do not parse as the method's message (a broken or hostile client)."""

    def __init__(self, message_name: str, size: int) -> None:
        super().__init__("request", f"{size} bytes that are not a valid {message_name} message")
        self.message_name = message_name
        self.size = size

    def wire_args(self) -> tuple[WireValue, ...]:
        return (self.message_name, self.size)


class UnknownAdapter(InvalidRequest, status_code="INVALID_ARGUMENT", refusal_reason="invalid"):
    """An adapter name the server does not serve."""

    def __init__(self, name: str, known: tuple[str, ...] | list[str]) -> None:
        super().__init__("adapter", f"unknown adapter {name!r}; known: {', '.join(known)}")
        self.name = name
        self.known = tuple(known)

    def wire_args(self) -> tuple[WireValue, ...]:
        return (self.name, self.known)


# -- limits: RESOURCE_EXHAUSTED with a retry delay --------------------------------------------------
class QuotaExceeded(ServerError, RuntimeError, status_code="RESOURCE_EXHAUSTED", refusal_reason=None):
    """The family of per-key and server limits; each limit raises its own subclass, which names the
    reason it is counted under. The client should back off for ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitExceeded(QuotaExceeded, status_code="RESOURCE_EXHAUSTED", refusal_reason="rate_limit"):
    """A key called more often than its requests per minute."""


class ConcurrencyLimitExceeded(QuotaExceeded, status_code="RESOURCE_EXHAUSTED", refusal_reason="concurrency"):
    """A key already runs its limit of concurrent calls."""


class ServerBusy(QuotaExceeded, status_code="RESOURCE_EXHAUSTED", refusal_reason="queue_full"):
    """The engine's queue is full; the client should retry after ``retry_after`` seconds."""


class BudgetExhausted(QuotaExceeded, status_code="RESOURCE_EXHAUSTED", refusal_reason="budget"):
    """A key has scored all the candidates its budget allows (for today, or in total)."""


# -- keys and replicas: UNAUTHENTICATED, UNAVAILABLE ----------------------------------------------
class AuthenticationFailed(
    ServerError, PermissionError, status_code="UNAUTHENTICATED", refusal_reason="unauthenticated"
):
    """Missing, unknown or expired API key."""


class BackendUnavailable(ServerError, ConnectionError, status_code="UNAVAILABLE", refusal_reason=None):
    """The replicas that score requests are unreachable (one died, or none is up yet); the client
    should retry after ``retry_after`` seconds, by which time the backend may have restarted one."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KeysUnavailable(BackendUnavailable, status_code="UNAVAILABLE", refusal_reason="keys_file"):
    """The keys file failed to reload: every call is refused until the operator fixes it."""


# -- calls that end before their scores: CANCELLED, UNAVAILABLE -----------------------------------
class CallCancelled(ServerError, status_code="CANCELLED", refusal_reason=None):
    """The caller went away (cancelled, or its deadline passed) before the call was scored; counted
    among the cancellations, not the refusals."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(f"call {reason} before it was scored")
        self.reason = reason

    def wire_args(self) -> tuple[WireValue, ...]:
        return (self.reason,)


class ServerShuttingDown(ServerError, ConnectionError, status_code="UNAVAILABLE", refusal_reason="draining"):
    """The server is draining or stopping; the client should retry, here after a restart or elsewhere."""

    def __init__(self, message: str = "server is shutting down; retry shortly", retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


# -- the operator's fault: refused at start-up, INTERNAL should one ever reach a call ---------------
class ConfigError(ServerError, ValueError, status_code="INTERNAL", refusal_reason=None):
    """Settings that cannot be served as given (missing files, unsafe transport)."""


class KeyFileError(ServerError, ValueError, status_code="INTERNAL", refusal_reason=None):
    """An API keys file that is missing, unreadable or malformed."""


class CertificateError(ServerError, OSError, status_code="INTERNAL", refusal_reason=None):
    """Certificates that cannot be written as asked."""


class ModelLoadError(ServerError, OSError, status_code="INTERNAL", refusal_reason=None):
    """The model could not be found or loaded."""


class ModelMismatch(ServerError, ValueError, status_code="INTERNAL", refusal_reason=None):
    """A generator checkpoint built for a different base model."""


class GeneratorFormatError(ServerError, ValueError, status_code="INTERNAL", refusal_reason=None):
    """A generator folder that is incomplete or inconsistent with its config."""


class AdapterSpecError(ServerError, ValueError, status_code="INTERNAL", refusal_reason=None):
    """An adapter spec that names an unknown method or settings the method cannot take."""
