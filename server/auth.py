"""API keys (stored only as sha256 hashes) and the interceptor that checks them and applies per-key quotas.

Keys are 256-bit random strings, so a plain sha256 is enough to store them
(no password stretching needed), and lookup compares against every entry
with ``hmac.compare_digest`` so timing reveals nothing about which one
matched. The interceptor covers the ``cbpt.v1.Tuning`` service only:
health checks and reflection stay open to probes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cbpt.server.errors import AuthenticationFailed, QuotaExceeded, ServerError
from cbpt.server.logs import current_key_id
from cbpt.server.service import error_status

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/cbpt.v1.Tuning/"
KEY_PREFIX = "cbpt_"
_KEY_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class KeyFileError(ServerError, ValueError):
    """An API keys file that is missing, unreadable or malformed."""


@dataclass(frozen=True)
class ApiKey:
    """One stored key: its id (what logs show), its hash, and its own limits (None: server default)."""

    id: str
    sha256: str
    requests_per_minute: int | None = None
    max_concurrent: int | None = None


def generate_key() -> str:
    """A new high-entropy API key (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_keys(path: Path) -> list[ApiKey]:
    """Parse ``{"keys": [{"id", "sha256", "requests_per_minute"?, "max_concurrent"?}]}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(f"API keys file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"API keys file {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise KeyFileError(f'API keys file {path}: expected {{"keys": [...]}}')
    keys: list[ApiKey] = []
    for i, entry in enumerate(entries):
        try:
            key = ApiKey(
                id=str(entry["id"]),
                sha256=str(entry["sha256"]).lower(),
                requests_per_minute=_optional_positive(entry.get("requests_per_minute")),
                max_concurrent=_optional_positive(entry.get("max_concurrent")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyFileError(f"API keys file {path}: keys[{i}] is malformed ({exc})") from None
        if not _KEY_ID.fullmatch(key.id) or not re.fullmatch(r"[0-9a-f]{64}", key.sha256):
            raise KeyFileError(
                f"API keys file {path}: keys[{i}] needs an id like 'alice' and a sha256 hex digest"
            )
        keys.append(key)
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise KeyFileError(f"API keys file {path}: duplicate key id")
    return keys


def _optional_positive(value: object) -> int | None:
    if value is None:
        return None
    number = int(value)  # type: ignore[call-overload]
    if number < 1:
        raise ValueError("limits must be at least 1")
    return number


def add_key(
    path: Path, key_id: str, requests_per_minute: int | None = None, max_concurrent: int | None = None
) -> str:
    """Add a key to ``path`` (created 0600 if absent); return its plaintext, the only time it exists."""
    if not _KEY_ID.fullmatch(key_id):
        raise KeyFileError(f"key id {key_id!r}: use 1-64 letters, digits, '.', '_' or '-'")
    keys = load_keys(path) if path.exists() else []
    if any(k.id == key_id for k in keys):
        raise KeyFileError(f"API keys file {path}: key id {key_id!r} already exists")
    plaintext = generate_key()
    keys.append(ApiKey(key_id, hash_key(plaintext), requests_per_minute, max_concurrent))
    entries = [{k: v for k, v in vars(key).items() if v is not None} for key in keys]
    _write_private(path, json.dumps({"keys": entries}, indent=2) + "\n")
    return plaintext


def _write_private(path: Path, text: str) -> None:
    """Atomic replace with mode 0600, so a crash never leaves a half-written keys file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class KeyStore:
    """Constant-time lookup of a presented key among the stored hashes."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = tuple(keys)

    @classmethod
    def from_file(cls, path: Path) -> KeyStore:
        return cls(load_keys(path))

    def lookup(self, presented: str) -> ApiKey | None:
        digest = hash_key(presented).encode("ascii")
        found: ApiKey | None = None
        for key in self._keys:  # no early exit: every entry is compared
            if hmac.compare_digest(digest, key.sha256.encode("ascii")):
                found = key
        return found


@dataclass
class _TokenBucket:
    """``rate_per_minute`` tokens a minute with a burst of one minute's worth."""

    rate_per_minute: int
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = float(self.rate_per_minute)

    def take(self) -> float:
        """Take one token; return 0 on success, else the seconds until one is available."""
        now = time.monotonic()
        rate = self.rate_per_minute / 60.0
        self.tokens = min(float(self.rate_per_minute), self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


Behavior = Callable[[object, grpc.aio.ServicerContext], Awaitable[object]]


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Checks ``authorization: Bearer <key>`` and per-key quotas on the Tuning service.

    All state lives on the server's event loop thread, so no locks are needed.
    """

    def __init__(self, store: KeyStore, requests_per_minute: int, max_concurrent: int) -> None:
        self._store = store
        self._default_rpm = requests_per_minute
        self._default_concurrent = max_concurrent
        self._buckets: dict[str, _TokenBucket] = {}
        self._in_flight: dict[str, int] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if not handler_call_details.method.startswith(SERVICE_PREFIX):
            return await continuation(handler_call_details)
        try:
            key = self._authenticate(handler_call_details.invocation_metadata or ())
            self._take_token(key)
        except (AuthenticationFailed, QuotaExceeded) as exc:
            return _refusal(exc)
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self._guarded(key, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _authenticate(self, metadata: tuple) -> ApiKey:
        values = [value for name, value in metadata if name == "authorization"]
        if not values:
            raise AuthenticationFailed("missing API key: send metadata 'authorization: Bearer <key>'")
        scheme, _, presented = str(values[0]).partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise AuthenticationFailed("malformed authorization metadata: expected 'Bearer <key>'")
        key = self._store.lookup(presented.strip())
        if key is None:
            log.info("refused call: unknown API key", extra={"code": "UNAUTHENTICATED"})
            raise AuthenticationFailed("invalid API key")
        return key

    def _take_token(self, key: ApiKey) -> None:
        rpm = key.requests_per_minute or self._default_rpm
        bucket = self._buckets.setdefault(key.id, _TokenBucket(rpm))
        wait = bucket.take()
        if wait > 0:
            log.info("refused call: rate limit", extra={"key_id": key.id, "retry_after": round(wait, 3)})
            raise QuotaExceeded(f"rate limit of {rpm} requests per minute exceeded for key {key.id!r}", wait)

    def _guarded(self, key: ApiKey, behavior: Behavior) -> Behavior:
        limit = key.max_concurrent or self._default_concurrent

        async def call(request: object, context: grpc.aio.ServicerContext) -> object:
            if self._in_flight.get(key.id, 0) >= limit:
                status = error_status(
                    QuotaExceeded(f"at most {limit} concurrent calls for key {key.id!r}", retry_after=1.0)
                )
                await context.abort_with_status(status)
            self._in_flight[key.id] = self._in_flight.get(key.id, 0) + 1
            token = current_key_id.set(key.id)
            try:
                return await behavior(request, context)
            finally:
                current_key_id.reset(token)
                self._in_flight[key.id] -= 1

        return call


def _refusal(error: AuthenticationFailed | QuotaExceeded) -> grpc.RpcMethodHandler:
    """A handler that answers with the error's status and never looks at the request."""
    status = error_status(error)

    async def refuse(_request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort_with_status(status)

    return grpc.unary_unary_rpc_method_handler(refuse)
