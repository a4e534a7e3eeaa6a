"""Fuzzing every RPC over a real loopback channel with hypothesis-generated requests.

Shapes that disagree, NaN and inf, extreme and subnormal floats, empty, huge and odd Unicode
strings, thousands of choices, unknown enum values, oversized messages and random bytes. After
each request: the answer is a deliberate status (never UNKNOWN or INTERNAL), the health check
answers SERVING, and a fixed valid request returns the same numbers as before the fuzzing.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbpt.common.wire import unpack_floats
from cbpt.server.engine import ScoringEngine
from cbpt.server.front.app import serve_in_background
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import DIMENSION, TEST_LIMITS, candidates, evaluate_request, plain_settings

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure here is reproducible, not flaky
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,  # the request breaks the contract (the usual answer)
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # over the transport's message limit
}
REFERENCE = evaluate_request(candidates(2, seed=11))
cases: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_channel(engine: ScoringEngine) -> Iterator[grpc.Channel]:
    with serve_in_background(engine, plain_settings()) as target, grpc.insecure_channel(target) as channel:
        yield channel


@pytest.fixture(scope="module")
def reference(fuzz_channel: grpc.Channel) -> np.ndarray:
    return _scores(tuning_pb2_grpc.TuningStub(fuzz_channel).Evaluate(REFERENCE, timeout=20))


def _scores(response: tuning_pb2.EvaluateResponse) -> np.ndarray:
    return unpack_floats(response.log_probs, (len(response.log_probs) // 4,), "log_probs")


def _still_serving(channel: grpc.Channel, reference: np.ndarray) -> None:
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=20)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    again = _scores(tuning_pb2_grpc.TuningStub(channel).Evaluate(REFERENCE, timeout=20))
    np.testing.assert_array_equal(again, reference)


def _answer(call, payload) -> grpc.StatusCode:
    code = grpc.StatusCode.OK
    try:
        call(payload, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in DELIBERATE, (error.code(), error.details())
        assert "Unexpected" not in (error.details() or "")
        code = error.code()
    cases[code.name] += 1
    return code


# -- strategies -----------------------------------------------------------------------------------
extreme_floats = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-45, 3.4e38, -3.4e38, 1000.0, 1000.5, 1e30]),
)
odd_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=250, max_size=400),  # around max_text_chars
    st.sampled_from(["", " ", "\n\n", "\x00", "Review: fine\nSentiment:", "§¶" * 60, "\U0001f600" * 90]),
)


@st.composite
def evaluate_requests(draw: st.DrawFn) -> bytes:
    rows = draw(st.integers(0, 6))
    dimension = draw(st.sampled_from([0, 1, DIMENSION - 1, DIMENSION, DIMENSION + 1, 4096]))
    values = draw(st.lists(extreme_floats, min_size=0, max_size=2 * DIMENSION))
    packed = struct.pack(f"<{len(values)}f", *values)
    if draw(st.booleans()) and dimension * rows <= 4096:  # often the right length, so values get checked
        packed = (
            struct.pack(f"<{rows * dimension}f", *(values * (rows * dimension))[: rows * dimension])
            if values
            else b""
        )
    request = tuning_pb2.EvaluateRequest(
        adapter=draw(st.sampled_from(["bbt", "cbp", "none", "", "BBT", "bbt\x00", "x" * 300])),
        dimension=dimension,
        num_candidates=draw(st.sampled_from([rows, 0, 1, 2, TEST_LIMITS.max_candidates + 1, 2**32 - 1])),
        candidates=packed,
        texts=draw(st.lists(odd_text, max_size=8)),
        mode=draw(st.sampled_from([0, 1, 2, 3, 2**31 - 1])),
        cue=draw(st.one_of(st.just(""), odd_text)),
    )
    form = draw(st.sampled_from(["shared", "per_example", "both", "neither", "thousands"]))
    choice = st.one_of(st.sampled_from([" yes", " no", " maybe", "", " yes"]), st.text(max_size=12))
    if form in ("shared", "both"):
        request.shared_choices.SetInParent()
        request.shared_choices.choices.extend(draw(st.lists(choice, max_size=6)))
    if form in ("per_example", "both"):
        for _ in range(draw(st.integers(0, 9))):
            request.example_choices.add().choices.extend(draw(st.lists(choice, max_size=5)))
    if form == "thousands":
        request.shared_choices.SetInParent()
        request.shared_choices.choices.extend(f" c{i}" for i in range(draw(st.integers(1000, 5000))))
    return request.SerializeToString()


# -- the properties -------------------------------------------------------------------------------
@FUZZ
@given(payload=evaluate_requests())
def test_fuzzed_evaluate_requests(fuzz_channel: grpc.Channel, reference: np.ndarray, payload: bytes) -> None:
    _answer(fuzz_channel.unary_unary("/cbpt.v1.Tuning/Evaluate"), payload)
    _still_serving(fuzz_channel, reference)


@FUZZ
@given(
    method=st.sampled_from(
        ["/cbpt.v1.Tuning/Evaluate", "/cbpt.v1.Tuning/GetServerInfo", "/grpc.health.v1.Health/Check"]
    ),
    payload=st.binary(max_size=2048),
)
def test_random_bytes_to_every_method(
    fuzz_channel: grpc.Channel, reference: np.ndarray, method: str, payload: bytes
) -> None:
    _answer(fuzz_channel.unary_unary(method), payload)
    _still_serving(fuzz_channel, reference)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (
            TEST_LIMITS.max_message_bytes + 1024,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),  # the service names the size
        (
            TEST_LIMITS.max_message_bytes + 2 * 1024 * 1024,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),  # the transport
    ],
)
def test_oversized_messages(fuzz_channel: grpc.Channel, reference: np.ndarray, size: int, expected) -> None:
    request = evaluate_request(texts=["Review: fine"] * 2)
    request.cue = "x" * size
    assert (
        _answer(fuzz_channel.unary_unary("/cbpt.v1.Tuning/Evaluate"), request.SerializeToString()) == expected
    )
    _still_serving(fuzz_channel, reference)


def test_fuzz_cases_were_run() -> None:
    """Runs last in this module: how many fuzzed requests the server answered and survived."""
    print(f"\nfuzz cases run: {sum(cases.values())} ({dict(cases)})")
    assert sum(cases.values()) >= 300 and cases["OK"] > 0 and cases["INVALID_ARGUMENT"] > 0
