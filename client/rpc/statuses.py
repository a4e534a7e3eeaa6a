"""Turning a failed gRPC call into one client error with a one-line message.

The server attaches grpcio-status rich details: ``BadRequest`` field violations
for invalid requests and ``RetryInfo`` when it wants the client to back off.
They are read from the trailing metadata; a server that sends none still maps
cleanly from the status code alone.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from cbpt.client.errors import (
    AuthError,
    ClientError,
    FieldViolation,
    NotSupported,
    QuotaExceeded,
    RequestRejected,
    ServerFailure,
    ServerUnavailable,
)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
_REJECTED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
    }
)
_AUTH = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    metadata = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in metadata or ():
        if key == rpc_status.GRPC_DETAILS_METADATA_KEY:
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a malformed detail must not hide the status code
                return None
    return None


def field_violations(error: grpc.RpcError) -> tuple[FieldViolation, ...]:
    """The BadRequest field violations a server attached, in order."""
    status = _rich_status(error)
    violations: list[FieldViolation] = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(
                FieldViolation(v.field, _one_line(v.description)) for v in bad_request.field_violations
            )
    return tuple(violations)


def retry_delay(error: grpc.RpcError) -> float | None:
    """Seconds the server asked the client to wait (RetryInfo), if it said."""
    status = _rich_status(error)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def code_of(error: grpc.RpcError) -> grpc.StatusCode:
    return error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN


# What a channel reports when its TLS setting does not match the server's (grpc's own wording).
_PLAINTEXT_TO_TLS = ("Socket closed", "Connection reset")
_TLS_FAILED = ("handshake", "ssl", "certificate")


def tls_hint(details: str, tls: bool | None) -> str:
    """Why an UNAVAILABLE may be a TLS mismatch, and the flag that fixes it ("" when it looks unrelated)."""
    if tls is False and any(marker in details for marker in _PLAINTEXT_TO_TLS):
        return (
            " (this client spoke plaintext; if the server uses TLS, give --ca-cert CA.pem, the CA that "
            "signed its certificate)"
        )
    if tls and "wrong_version_number" in details.lower():
        return " (the server does not answer TLS: it may be plaintext; use --insecure on loopback)"
    if tls and any(marker in details.lower() for marker in _TLS_FAILED):
        return (
            " (the TLS handshake failed: check that --ca-cert names the CA that signed the server's "
            "certificate, or use --insecure if the server is plaintext on loopback)"
        )
    return ""


def to_client_error(
    error: grpc.RpcError, *, target: str, method: str, timeout: float | None, tls: bool | None = None
) -> ClientError:
    """The client error for a failed call, its message naming the server, field or limit.

    ``tls`` says whether the channel used TLS, so that a refused handshake or a plaintext
    attempt on a TLS port (which grpc reports as a closed socket) comes with the fix.
    """
    code = code_of(error)
    details = _one_line(error.details() if hasattr(error, "details") else "") or code.name
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServerUnavailable(f"server {target} is unavailable: {details}{tls_hint(details, tls)}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return ServerUnavailable(f"server {target} gave no answer to {method} within {timeout} s")
    if code in _AUTH:
        return AuthError(f"server {target} refused the API key ({code.name}): {details}")
    if code in _REJECTED:
        violations = field_violations(error)
        reason = "; ".join(str(v) for v in violations) if violations else details
        return RequestRejected(f"server rejected {method}: {reason}", violations)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        delay = retry_delay(error)
        hint = f"; retry after {delay:g} s" if delay is not None else ""
        return QuotaExceeded(f"server {target} quota exceeded: {details}{hint}", delay)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return NotSupported(f"server {target} does not offer {method} (an older server?): {details}")
    return ServerFailure(f"server {target} failed {method} ({code.name}): {details}")
