"""The server's errors, all in one place; status.py maps each class to one gRPC status code.

Each is also a built-in (``InvalidRequest`` is a ``ValueError``), as nevergrad does, so callers
may catch either.
"""

from __future__ import annotations

from cbpt.common.errors import CbptError, CbptWarning


class ServerError(CbptError):
    """Base class of errors the server raises on purpose."""


class ServerWarning(CbptWarning):
    """Something the operator should know that does not stop the server."""


# -- a request's fault: INVALID_ARGUMENT ----------------------------------------------------------
class InvalidRequest(ServerError, ValueError):
    """A request that breaks the contract; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class MalformedRequest(InvalidRequest):
    """Request bytes that do not parse as the method's message (a broken or hostile client)."""

    def __init__(self, message_name: str, size: int) -> None:
        super().__init__("request", f"{size} bytes that are not a valid {message_name} message")


class UnknownAdapter(InvalidRequest):
    """An adapter name the server does not serve."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__("adapter", f"unknown adapter {name!r}; known: {', '.join(known)}")


# -- limits, keys and replicas: RESOURCE_EXHAUSTED, UNAVAILABLE, UNAUTHENTICATED ------------------
class QuotaExceeded(ServerError, RuntimeError):
    """A per-key limit was hit; the client should back off for ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerBusy(QuotaExceeded):
    """The engine's queue is full; the client should retry after ``retry_after`` seconds."""


class BackendUnavailable(ServerError, ConnectionError):
    """The replicas that score requests are unreachable (one died, or none is up yet); the client
    should retry after ``retry_after`` seconds, by which time the backend may have restarted one."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KeysUnavailable(BackendUnavailable):
    """The keys file failed to reload: every call is refused until the operator fixes it."""


class BudgetExhausted(QuotaExceeded):
    """A key has scored all the candidates its budget allows (for today, or in total)."""


class AuthenticationFailed(ServerError, PermissionError):
    """Missing, unknown or expired API key."""


# -- calls that end before their scores: CANCELLED, UNAVAILABLE -----------------------------------
class CallCancelled(ServerError):
    """The caller went away (cancelled, or its deadline passed) before the call was scored."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(f"call {reason} before it was scored")
        self.reason = reason


class ServerShuttingDown(ServerError, ConnectionError):
    """The server is draining or stopping; the client should retry, here after a restart or elsewhere."""

    def __init__(self, message: str = "server is shutting down; retry shortly", retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


# -- the operator's fault: refused at start-up ----------------------------------------------------
class ConfigError(ServerError, ValueError):
    """Settings that cannot be served as given (missing files, unsafe transport)."""


class KeyFileError(ServerError, ValueError):
    """An API keys file that is missing, unreadable or malformed."""


class CertificateError(ServerError, OSError):
    """Certificates that cannot be written as asked."""


class ModelLoadError(ServerError, OSError):
    """The model could not be found or loaded."""


class ModelMismatch(ServerError, ValueError):
    """A generator checkpoint built for a different base model."""


class GeneratorFormatError(ServerError, ValueError):
    """A generator folder that is incomplete or inconsistent with its config."""


class AdapterSpecError(ServerError, ValueError):
    """An adapter spec that names an unknown method or settings the method cannot take."""
