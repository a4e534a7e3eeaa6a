"""The error table: every server error class states its status code, refusal reason and wire form,
and each one crosses the Ray hop and comes back as the same error with the same status."""

from __future__ import annotations

import pickle

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from cbpt.server import errors
from cbpt.server.deploy.messages import Refusal
from cbpt.server.errors import ServerError
from cbpt.server.front.calls import CallOutcome, record_metrics
from cbpt.server.front.metrics import Metrics
from cbpt.server.front.status import INTERNAL_MESSAGE, error_status

# One of each class, with the status a client sees: its code and the rich details attached. A class
# added to errors.py without a line here fails test_every_class_has_a_sample.
SAMPLES: list[tuple[ServerError, grpc.StatusCode, tuple[str, ...]]] = [
    (errors.InvalidRequest("candidates[3]", "contains NaN or inf"), grpc.StatusCode.INVALID_ARGUMENT,
     ("BadRequest",)),
    (errors.MalformedRequest("cbpt.v1.EvaluateRequest", 17), grpc.StatusCode.INVALID_ARGUMENT,
     ("BadRequest",)),
    (errors.UnknownAdapter("cbpx", ["none", "bbt"]), grpc.StatusCode.INVALID_ARGUMENT, ("BadRequest",)),
    (errors.QuotaExceeded("a limit", 2.0), grpc.StatusCode.RESOURCE_EXHAUSTED, ("RetryInfo",)),
    (errors.RateLimitExceeded("rate limit of 60 requests", 0.5), grpc.StatusCode.RESOURCE_EXHAUSTED,
     ("RetryInfo",)),
    (errors.ConcurrencyLimitExceeded("at most 2 calls", 1.0), grpc.StatusCode.RESOURCE_EXHAUSTED,
     ("RetryInfo",)),
    (errors.ServerBusy("server busy", 0.25), grpc.StatusCode.RESOURCE_EXHAUSTED, ("RetryInfo",)),
    (errors.BudgetExhausted("budget spent", 3600.0), grpc.StatusCode.RESOURCE_EXHAUSTED, ("RetryInfo",)),
    (errors.AuthenticationFailed("invalid API key"), grpc.StatusCode.UNAUTHENTICATED, ()),
    (errors.BackendUnavailable("a replica is unavailable", 1.5), grpc.StatusCode.UNAVAILABLE, ("RetryInfo",)),
    (errors.KeysUnavailable("the keys file failed", 30.0), grpc.StatusCode.UNAVAILABLE, ("RetryInfo",)),
    (errors.CallCancelled("deadline"), grpc.StatusCode.CANCELLED, ()),
    (errors.ServerShuttingDown("draining", 1.0), grpc.StatusCode.UNAVAILABLE, ("RetryInfo",)),
    (errors.ConfigError("no model"), grpc.StatusCode.INTERNAL, ()),
    (errors.KeyFileError("keys.json: bad"), grpc.StatusCode.INTERNAL, ()),
    (errors.CertificateError("cannot write"), grpc.StatusCode.INTERNAL, ()),
    (errors.ModelLoadError("no such model"), grpc.StatusCode.INTERNAL, ()),
    (errors.ModelMismatch("another model"), grpc.StatusCode.INTERNAL, ()),
    (errors.GeneratorFormatError("incomplete"), grpc.StatusCode.INTERNAL, ()),
    (errors.AdapterSpecError("unknown method"), grpc.StatusCode.INTERNAL, ()),
]  # fmt: skip
REASONS = {
    "invalid",
    "budget",
    "queue_full",
    "draining",
    "unauthenticated",
    "keys_file",
    "rate_limit",
    "concurrency",
}


def _classes(root: type[ServerError] = ServerError) -> set[type[ServerError]]:
    found: set[type[ServerError]] = set()
    for child in root.__subclasses__():
        found |= {child, *_classes(child)}
    return found


def _rich(status: grpc.Status) -> status_pb2.Status:
    (details,) = [value for key, value in status.trailing_metadata if key == "grpc-status-details-bin"]
    return status_pb2.Status.FromString(details)


def test_every_class_has_a_sample() -> None:
    assert {type(error) for error, _, _ in SAMPLES} == _classes()


def test_every_class_states_its_entry_in_its_class_line() -> None:
    for cls in _classes():
        assert {"status_code", "refusal_reason"} <= set(vars(cls)), cls
        code_pb2.Code.Value(cls.status_code)  # a ValueError for a name that is not a gRPC code
        assert cls.refusal_reason is None or cls.refusal_reason in REASONS, cls
    with pytest.raises(TypeError, match="status_code"):

        class Forgotten(errors.InvalidRequest):  # no line of the table: refused as the class is made
            pass


@pytest.mark.parametrize(("error", "code", "details"), SAMPLES, ids=lambda value: type(value).__name__)
def test_each_error_has_its_status_and_details(
    error: ServerError, code: grpc.StatusCode, details: tuple[str, ...]
) -> None:
    status = error_status(error)
    rich = _rich(status)
    assert status.code == code and rich.code == code.value[0]
    assert (
        status.details
        == rich.message
        == (INTERNAL_MESSAGE if code == grpc.StatusCode.INTERNAL else str(error))
    )
    assert tuple(detail.TypeName().rsplit(".", 1)[-1] for detail in rich.details) == details
    for detail in rich.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            assert [(v.field, v.description) for v in bad.field_violations] == [
                (error.field, error.description)  # type: ignore[attr-defined]
            ]
        else:
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            assert error.retry_after is not None
            assert info.retry_delay.ToMilliseconds() == round(error.retry_after * 1000)


@pytest.mark.parametrize(("error", "code", "details"), SAMPLES, ids=lambda value: type(value).__name__)
def test_each_error_crosses_the_hop_as_the_same_error(
    error: ServerError, code: grpc.StatusCode, details: tuple[str, ...]
) -> None:
    again = pickle.loads(pickle.dumps(Refusal.of(error))).error()
    assert type(again) is type(error) and str(again) == str(error)
    assert again.wire_args() == error.wire_args() and again.retry_after == error.retry_after
    assert getattr(again, "field", None) == getattr(error, "field", None)
    assert error_status(again) == error_status(error)  # the client sees exactly the same status


def test_a_non_server_error_is_internal_with_a_fixed_message() -> None:
    status = error_status(RuntimeError("secret input text"))
    assert status.code == grpc.StatusCode.INTERNAL and status.details == INTERNAL_MESSAGE


@pytest.mark.parametrize(("error", "code", "details"), SAMPLES, ids=lambda value: type(value).__name__)
def test_a_refusal_is_counted_under_its_reason(
    error: ServerError, code: grpc.StatusCode, details: tuple[str, ...]
) -> None:
    metrics = Metrics()
    record_metrics(metrics, CallOutcome("Evaluate", code.name, 0.5, error), candidates=None)
    counted = {
        sample.labels["reason"]: sample.value
        for metric in metrics.refusals.collect()
        for sample in metric.samples
        if sample.name == "cbpt_refusals_total"
    }
    assert counted == ({error.refusal_reason: 1.0} if error.refusal_reason else {})
