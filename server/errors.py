"""The server's error hierarchy; service.py maps each class to one gRPC status code."""

from __future__ import annotations

from cbpt.common.errors import CbptError


class ServerError(CbptError):
    """Base class of errors the server raises on purpose."""


class InvalidRequest(ServerError, ValueError):
    """A request that breaks the contract; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


class UnknownAdapter(InvalidRequest):
    """An adapter name the server does not serve."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__("adapter", f"unknown adapter {name!r}; known: {', '.join(known)}")


class QuotaExceeded(ServerError, RuntimeError):
    """A per-key limit was hit; the client should back off for ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthenticationFailed(ServerError, PermissionError):
    """Missing or unknown API key."""


class ModelMismatch(ServerError, ValueError):
    """A generator checkpoint built for a different base model."""
