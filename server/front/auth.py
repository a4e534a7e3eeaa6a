"""The interceptor that names each call's tenant (API key or client certificate) and applies its quotas.

It covers the ``cbpt.v1.Tuning`` service only, so health checks and reflection stay open to
probes, and it wraps every handler kind (unary and streaming alike) in the same guard. It
depends on the key store and the status mapping, never on the servicer it guards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from cbpt.server.errors import (
    AuthenticationFailed,
    ConcurrencyLimitExceeded,
    KeysUnavailable,
    RateLimitExceeded,
    ServerError,
)
from cbpt.server.front.keys import CERTIFICATE_NAME, CERTIFICATE_PREFIX, ApiKey, KeyStore
from cbpt.server.front.status import error_status
from cbpt.server.logs import current_key_id

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/cbpt.v1.Tuning/"


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


Unary = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]
_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Names the tenant of every Tuning call and applies its quotas.

    The tenant is the API key's entry (``authorization: Bearer <key>``), or with mTLS (``mtls``)
    the client certificate: the keys-file entry that names it (``certificate``), or without a keys
    file the certificate itself (``cert:<CN or SAN>``, with the server's default limits). Caches,
    budgets and fair shares are all scoped by that id. The certificate is read from the call's
    auth context, so the check runs in the wrapped handler. All state lives on the server's event
    loop thread, so no locks are needed.
    """

    def __init__(
        self,
        store: KeyStore | None,
        requests_per_minute: int,
        max_concurrent: int,
        on_refusal: Callable[[str], None] = lambda reason: None,
        *,
        mtls: bool = False,
    ) -> None:
        self._store = store
        self._mtls = mtls
        self._on_refusal = on_refusal  # metrics: refusals by the error table's reason
        self._default_rpm = requests_per_minute
        self._default_concurrent = max_concurrent
        self._buckets: dict[str, _TokenBucket] = {}
        self._in_flight: dict[str, int] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(SERVICE_PREFIX):
            return handler
        metadata = tuple(handler_call_details.invocation_metadata or ())
        try:
            self._precheck(metadata)
        except (AuthenticationFailed, KeysUnavailable) as exc:
            self._count(exc)
            refused = exc
            # Answered from the metadata alone: the request bytes (up to the message limit) go unparsed.
            return _rewrap(handler, lambda behavior, streaming: _refusal(refused, streaming), parse=_unparsed)
        return _rewrap(handler, lambda behavior, streaming: self._guarded(metadata, behavior, streaming))

    def _precheck(self, metadata: tuple) -> None:
        """What can be refused from the metadata alone, before the request is parsed: a broken keys
        file, a missing key where no certificate can name the tenant, an unknown or malformed key.
        The certificate checks, expiry and the tenant's limits follow in the handler (``_enter``)."""
        self._check_keys_file()
        values = [value for name, value in metadata if name == "authorization"]
        if values and self._store is not None:
            self._by_bearer(str(values[0]))
        elif not values and not self._mtls:
            raise AuthenticationFailed("missing API key: send metadata 'authorization: Bearer <key>'")

    def _enter(self, metadata: tuple, context: grpc.aio.ServicerContext) -> ApiKey:
        """The call's tenant, past its rate and concurrency limits; raises the refusal otherwise."""
        try:
            key = self._authenticate(metadata, context)
            self._take_token(key)
            self._admit(key)
        except ServerError as refused:
            self._count(refused)
            raise
        return key

    def _count(self, refused: ServerError) -> None:
        """Count a refusal under its reason in the error table."""
        if refused.refusal_reason is not None:
            self._on_refusal(refused.refusal_reason)

    def _check_keys_file(self) -> None:
        if self._store is not None and self._store.broken is not None:
            raise KeysUnavailable(
                "the server's API keys file failed to reload; calls are refused until the operator fixes it",
                retry_after=30.0,
            )

    def _authenticate(self, metadata: tuple, context: grpc.aio.ServicerContext) -> ApiKey:
        self._check_keys_file()
        names = certificate_names(context) if self._mtls else []
        values = [value for name, value in metadata if name == "authorization"]
        if values and self._store is not None:  # with mTLS alone, the certificate names the tenant
            key = self._by_bearer(str(values[0]))
            if key.certificate is not None and key.certificate not in names:
                log.info("refused call: key used without its certificate", extra={"key_id": key.id})
                raise AuthenticationFailed(f"API key {key.id!r} works only with its client certificate")
        elif names:
            key = self._by_certificate(names)
        elif self._mtls and self._store is None:
            raise AuthenticationFailed("the client certificate names no tenant (no usable CN or SAN)")
        else:
            raise AuthenticationFailed("missing API key: send metadata 'authorization: Bearer <key>'")
        if key.expired():
            assert key.expires is not None
            log.info("refused call: expired API key", extra={"key_id": key.id, "code": "UNAUTHENTICATED"})
            raise AuthenticationFailed(f"API key {key.id!r} expired at {key.expires.isoformat()}")
        return key

    def _by_bearer(self, value: str) -> ApiKey:
        scheme, _, presented = value.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise AuthenticationFailed("malformed authorization metadata: expected 'Bearer <key>'")
        assert self._store is not None
        key = self._store.lookup(presented.strip())
        if key is None:
            log.info("refused call: unknown API key", extra={"code": "UNAUTHENTICATED"})
            raise AuthenticationFailed("invalid API key")
        return key

    def _by_certificate(self, names: list[str]) -> ApiKey:
        if self._store is None:  # mTLS alone: the certificate is the tenant, with the default limits
            return ApiKey(CERTIFICATE_PREFIX + names[0], None, certificate=names[0])
        key = self._store.by_certificate(names)
        if key is None:
            log.info("refused call: certificate without an entry", extra={"code": "UNAUTHENTICATED"})
            raise AuthenticationFailed(
                "missing API key: send metadata 'authorization: Bearer <key>' (this client certificate "
                "has no entry of its own in the keys file)"
            )
        return key

    def _take_token(self, key: ApiKey) -> None:
        rpm = key.requests_per_minute or self._default_rpm
        bucket = self._buckets.get(key.id)
        if bucket is None or bucket.rate_per_minute != rpm:  # new key, or its rate changed on reload
            bucket = self._buckets[key.id] = _TokenBucket(rpm)
        wait = bucket.take()
        if wait > 0:
            log.info("refused call: rate limit", extra={"key_id": key.id, "retry_after": round(wait, 3)})
            raise RateLimitExceeded(
                f"rate limit of {rpm} requests per minute exceeded for key {key.id!r}", wait
            )

    def _admit(self, key: ApiKey) -> None:
        """Count the call in, or refuse it when the tenant already runs its limit of calls."""
        limit = key.max_concurrent or self._default_concurrent
        if self._in_flight.get(key.id, 0) >= limit:
            raise ConcurrencyLimitExceeded(
                f"at most {limit} concurrent calls for key {key.id!r}", retry_after=1.0
            )
        self._in_flight[key.id] = self._in_flight.get(key.id, 0) + 1

    def _release(self, key: ApiKey) -> None:
        self._in_flight[key.id] -= 1

    def _guarded(self, metadata: tuple, behavior: Any, streaming: bool) -> Any:
        """The handler behind authentication and the tenant's limits, with its id set for logs and caches."""

        async def enter(context: grpc.aio.ServicerContext) -> ApiKey:
            try:
                return self._enter(metadata, context)
            except ServerError as refused:
                await context.abort_with_status(error_status(refused))
                raise  # not reached: abort_with_status ends the call by raising

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            key = await enter(context)
            token = current_key_id.set(key.id)
            try:
                return await behavior(request, context)
            finally:
                current_key_id.reset(token)
                self._release(key)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            key = await enter(context)
            token = current_key_id.set(key.id)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                current_key_id.reset(token)
                self._release(key)

        return stream if streaming else call


def certificate_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The verified client certificate's CN, then its SANs: the names a tenant may be known by.

    A name outside ``CERTIFICATE_NAME`` (spaces, odd characters) is skipped: it could not name a
    tenant in logs and usage files."""
    auth = context.auth_context() or {}
    found = [*auth.get("x509_common_name", ()), *auth.get("x509_subject_alternative_name", ())]
    names = [raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw) for raw in found]
    return list(dict.fromkeys(name for name in names if CERTIFICATE_NAME.fullmatch(name)))


def _rewrap(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Any, bool], Any],
    parse: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """The same handler kind with its behaviour wrapped (``wrap(behavior, response_streaming)``) and,
    if given, ``parse`` in place of its request deserializer."""
    for kind, build in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            return build(
                wrap(behavior, kind.endswith("_stream")),
                request_deserializer=parse or handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


def _unparsed(_data: bytes) -> None:
    """The request deserializer of a refused call: the bytes are dropped unread."""
    return None


def _refusal(error: AuthenticationFailed | KeysUnavailable, streaming: bool) -> Any:
    """A behaviour that answers with the error's status and never looks at the request."""
    status = error_status(error)

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort_with_status(status)

    async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort_with_status(status)
        yield  # pragma: no cover  (abort raises; this line makes it an async generator)

    return refuse_stream if streaming else refuse
