"""The interceptor that checks API keys and applies per-key quotas on the Tuning service.

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

from cbpt.server.errors import AuthenticationFailed, QuotaExceeded
from cbpt.server.keys import ApiKey, KeyStore
from cbpt.server.logs import current_key_id
from cbpt.server.status import error_status

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
    """Checks ``authorization: Bearer <key>`` and per-key quotas on the Tuning service.

    All state lives on the server's event loop thread, so no locks are needed.
    """

    def __init__(
        self,
        store: KeyStore,
        requests_per_minute: int,
        max_concurrent: int,
        on_refusal: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._store = store
        self._on_refusal = on_refusal  # metrics: refusals by reason
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
        try:
            key = self._authenticate(handler_call_details.invocation_metadata or ())
            self._take_token(key)
        except (AuthenticationFailed, QuotaExceeded) as exc:
            self._on_refusal("unauthenticated" if isinstance(exc, AuthenticationFailed) else "rate_limit")
            refused = exc
            # Answered from the metadata alone: the request bytes (up to the message limit) go unparsed.
            return _rewrap(handler, lambda behavior, streaming: _refusal(refused, streaming), parse=_unparsed)
        return _rewrap(handler, lambda behavior, streaming: self._guarded(key, behavior, streaming))

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
        if key.expired():
            assert key.expires is not None
            log.info("refused call: expired API key", extra={"key_id": key.id, "code": "UNAUTHENTICATED"})
            raise AuthenticationFailed(f"API key {key.id!r} expired at {key.expires.isoformat()}")
        return key

    def _take_token(self, key: ApiKey) -> None:
        rpm = key.requests_per_minute or self._default_rpm
        bucket = self._buckets.get(key.id)
        if bucket is None or bucket.rate_per_minute != rpm:  # new key, or its rate changed on reload
            bucket = self._buckets[key.id] = _TokenBucket(rpm)
        wait = bucket.take()
        if wait > 0:
            log.info("refused call: rate limit", extra={"key_id": key.id, "retry_after": round(wait, 3)})
            raise QuotaExceeded(f"rate limit of {rpm} requests per minute exceeded for key {key.id!r}", wait)

    def _admit(self, key: ApiKey) -> QuotaExceeded | None:
        """Count the call in, or the refusal when the key already runs its limit of calls."""
        limit = key.max_concurrent or self._default_concurrent
        if self._in_flight.get(key.id, 0) >= limit:
            self._on_refusal("concurrency")
            return QuotaExceeded(f"at most {limit} concurrent calls for key {key.id!r}", retry_after=1.0)
        self._in_flight[key.id] = self._in_flight.get(key.id, 0) + 1
        return None

    def _release(self, key: ApiKey) -> None:
        self._in_flight[key.id] -= 1

    def _guarded(self, key: ApiKey, behavior: Any, streaming: bool) -> Any:
        """The handler behind the key's concurrency limit, with the key id set for logs and caches."""

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            refused = self._admit(key)
            if refused is not None:
                await context.abort_with_status(error_status(refused))
            token = current_key_id.set(key.id)
            try:
                return await behavior(request, context)
            finally:
                current_key_id.reset(token)
                self._release(key)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            refused = self._admit(key)
            if refused is not None:
                await context.abort_with_status(error_status(refused))
            token = current_key_id.set(key.id)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                current_key_id.reset(token)
                self._release(key)

        return stream if streaming else call


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


def _refusal(error: AuthenticationFailed | QuotaExceeded, streaming: bool) -> Any:
    """A behaviour that answers with the error's status and never looks at the request."""
    status = error_status(error)

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort_with_status(status)

    async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort_with_status(status)
        yield  # pragma: no cover  (abort raises; this line makes it an async generator)

    return refuse_stream if streaming else refuse
