"""The client's error and warning hierarchies.

Each error is also a built-in, so callers may catch ``ClientError`` or the
familiar ``ValueError``/``ConnectionError``/``PermissionError``. Messages are one
line and name the field at fault, because the CLI prints them as they are.
Warnings descend from ``CbptWarning``, so one ``warnings`` filter covers them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from cbpt.common.errors import CbptError, CbptWarning
from cbpt.common.errors import NotSupported as _NotSupported

# Shared with the server's training (the task format is common code): declared in cbpt.common.errors.
from cbpt.common.errors import TaskError as TaskError
from cbpt.common.errors import TunerWarning as TunerWarning


class ClientError(CbptError):
    """Base class of every error the client raises on purpose."""


class ServerUnavailable(ClientError, ConnectionError):
    """The server could not be reached, or kept answering UNAVAILABLE past the retries."""


class AuthError(ClientError, PermissionError):
    """The server refused the API key (missing, unknown or not allowed)."""


@dataclass(frozen=True)
class FieldViolation:
    """One offending request field, as the server named it in its BadRequest detail."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}" if self.field else self.description


class RequestRejected(ClientError, ValueError):
    """The server (or the client, before sending) refused a request; ``violations`` name the fields."""

    def __init__(self, message: str, violations: tuple[FieldViolation, ...] = ()) -> None:
        super().__init__(message)
        self.violations = violations

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(violation.field for violation in self.violations)


class QuotaExceeded(ClientError, RuntimeError):
    """The server kept answering RESOURCE_EXHAUSTED past the retries."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerFailure(ClientError, RuntimeError):
    """The server failed in a way the client cannot fix (INTERNAL, UNIMPLEMENTED, ...)."""


class NotSupported(ServerFailure, _NotSupported):
    """The server does not offer the call (UNIMPLEMENTED): an older server, e.g. without CountTokens."""


class CheckpointError(ClientError, ValueError):
    """A checkpoint or encrypted artifact that is missing, tampered, foreign, or for another config."""


class FingerprintMismatch(ClientError, ValueError):
    """A tuned vector used against a server whose model differs from the one it was tuned on."""


class ConfigError(ClientError, ValueError):
    """Tuner settings that cannot work (unknown optimizer or loss, a budget below one generation, ...)."""


class ArtifactError(ClientError, ValueError):
    """A tuned-task folder that is missing files or holds malformed ones."""


class ArtifactModified(ArtifactError):
    """A vector file whose sha256 is not the one its task.json recorded: modified, corrupted or swapped."""


# -- warnings ---------------------------------------------------------------------------------------
class ClientWarning(CbptWarning):
    """Base class of every warning the client issues."""


class ArtifactWarning(ClientWarning):
    """A tuned-task folder written by a newer client: it loads, but some of it is not understood."""


class KeyWarning(ClientWarning):
    """A key file other users can read: it still opens, but it no longer protects much."""
