"""The interceptor that answers request bytes that do not parse with INVALID_ARGUMENT.

grpc parses a request before any handler runs; when the bytes are not the method's message it
answers UNKNOWN with the parser's exception text and logs an ERROR traceback. This interceptor
gives every unary-request handler (the Tuning service, health and reflection alike) a parser
that cannot raise (``serde.safe_parser``), and a behaviour that answers a malformed request with
a plain INVALID_ARGUMENT and one WARNING line, without a trace.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from cbpt.server.errors import MalformedRequest
from cbpt.server.front.serde import safe_parser
from cbpt.server.front.status import error_status

log = logging.getLogger(__name__)


class RequestDecodingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        parse = safe_parser(handler.request_deserializer, _message_name(handler.request_deserializer, method))
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, method),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        streaming = handler.unary_stream
        # A streaming behaviour is an async generator, or a coroutine that writes (health's Watch).
        wrapped = (
            _streaming(streaming, method)
            if inspect.isasyncgenfunction(streaming)
            else _unary(streaming, method)
        )
        return grpc.unary_stream_rpc_method_handler(
            wrapped,
            request_deserializer=parse,
            response_serializer=handler.response_serializer,
        )


def _message_name(deserializer: Any, method: str) -> str:
    """``cbpt.v1.EvaluateRequest`` for a generated ``FromString``, else the method's request."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None) or f"{method} request"


def _refuse(error: MalformedRequest, method: str) -> grpc.Status:
    log.warning("malformed request", extra={"method": method.rsplit("/", 1)[-1], "code": "INVALID_ARGUMENT"})
    return error_status(error)


def _unary(behavior: Any, method: str) -> Any:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, MalformedRequest):
            await context.abort_with_status(_refuse(request, method))
        return await behavior(request, context)

    return call


def _streaming(behavior: Any, method: str) -> Any:
    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, MalformedRequest):
            await context.abort_with_status(_refuse(request, method))
        async for response in behavior(request, context):
            yield response

    return stream
