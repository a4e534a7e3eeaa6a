"""What every Tuning handler does around its own work, written once: time the call, count it in the
metrics, write its one log line, and answer a failure with its status from the error table.

``@answered`` wraps a servicer method as grpc's latency-interceptor example wraps a handler, so the
method reads serde -> backend -> serde and lets its errors rise. The metrics and the log line are two
separate reports of one ``CallOutcome``. The log line carries the fields the method's ``log_fields``
gives (sizes, timings and known names from serde, never texts), and the formatter in ``logs.py``
filters it again; an unexpected error is logged at ERROR with its type and frames, never its message.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from cbpt.server.errors import InvalidRequest, ServerError
from cbpt.server.front.metrics import Metrics
from cbpt.server.front.status import error_status, status_code_name

log = logging.getLogger(__name__)


class Answering(Protocol):
    """What the plumbing needs of a servicer."""

    @property
    def metrics(self) -> Metrics | None: ...

    def call_in_flight(self) -> AbstractContextManager[None]:
        """Held from the call's start until its answer or status is sent (draining waits on it)."""
        ...


Servicer = TypeVar("Servicer", bound=Answering)
Handler = Callable[[Servicer, Any, grpc.aio.ServicerContext], Awaitable[Any]]
# A method's log fields from its request and its response (None when the call failed).
LogFields = Callable[[Servicer, Any, Any], dict[str, object]]
# The candidates an answered call scored: given, the call goes in the latency histogram too.
Candidates = Callable[[Any], int]


@dataclass(frozen=True)
class CallOutcome:
    """How one call ended: its status code's name (``OK`` when answered), time, and error if any."""

    method: str
    code: str
    seconds: float
    error: BaseException | None = None


def answered(
    log_fields: LogFields[Servicer], candidates: Candidates | None = None
) -> Callable[[Handler[Servicer]], Handler[Servicer]]:
    """Wrap a servicer method (named after its RPC, as grpc's generated servicers are) in the plumbing."""

    def wrap(handler: Handler[Servicer]) -> Handler[Servicer]:
        method = handler.__name__
        message = re.sub(r"(?<!^)(?=[A-Z])", " ", method).lower()  # "CountTokens" -> "count tokens"

        def report(servicer: Servicer, request: Any, response: Any, outcome: CallOutcome) -> None:
            record_metrics(servicer.metrics, outcome, candidates(request) if candidates is not None else None)
            log_call(message, outcome, log_fields(servicer, request, response))

        @functools.wraps(handler)
        async def call(servicer: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            with servicer.call_in_flight():
                try:
                    response = await handler(servicer, request, context)
                except Exception as error:  # every failure leaves through the error table
                    failed = CallOutcome(method, status_code_name(error), _since(started), error)
                    report(servicer, request, None, failed)
                    await context.abort_with_status(error_status(error))
                    raise  # not reached: abort_with_status ends the call by raising
                report(servicer, request, response, CallOutcome(method, "OK", _since(started)))
                return response

        return call

    return wrap


def record_metrics(metrics: Metrics | None, outcome: CallOutcome, candidates: int | None) -> None:
    """A refusal under its reason in the error table; with ``candidates``, the call's latency too."""
    if metrics is None:
        return
    if isinstance(outcome.error, ServerError) and outcome.error.refusal_reason is not None:
        metrics.refused(outcome.error.refusal_reason)
    if candidates is not None:
        metrics.call(outcome.code, outcome.seconds, candidates)


def log_call(message: str, outcome: CallOutcome, fields: dict[str, object]) -> None:
    """One line per call: the method's fields, then time, code and what failed (a field, or a type)."""
    fields = {"method": outcome.method, **fields, "seconds": round(outcome.seconds, 4), "code": outcome.code}
    if isinstance(outcome.error, InvalidRequest):
        fields["field"] = outcome.error.field
    elif outcome.error is not None:
        fields["error_type"] = type(outcome.error).__name__
    if outcome.code == "INTERNAL":
        log.error(f"{message} failed", exc_info=outcome.error, extra=fields)
    else:
        log.info(message, extra=fields)


def _since(started: float) -> float:
    return time.perf_counter() - started
