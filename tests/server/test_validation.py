"""Every malformed request is INVALID_ARGUMENT naming its field, and the server keeps serving."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from cbpt.server.engine import ScoringEngine
from cbpt.server.errors import InvalidRequest
from cbpt.server.front import serde
from cbpt.server.front.app import serve_in_background
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import (
    DIMENSION,
    TEST_LIMITS,
    TEXTS,
    GatedEngine,
    call_fails,
    candidates,
    evaluate_request,
    plain_settings,
)


def _nan() -> tuning_pb2.EvaluateRequest:
    z = candidates(2)
    z[1, 3] = np.nan
    return evaluate_request(z)


def _inf() -> tuning_pb2.EvaluateRequest:
    z = candidates(2)
    z[0, 0] = np.inf
    return evaluate_request(z)


def _short_bytes() -> tuning_pb2.EvaluateRequest:
    request = evaluate_request()
    request.candidates = request.candidates[:-4]
    return request


def _zero_candidates() -> tuning_pb2.EvaluateRequest:
    request = evaluate_request()
    request.num_candidates = 0
    request.candidates = b""
    return request


def _both_choice_forms() -> tuning_pb2.EvaluateRequest:
    request = evaluate_request()
    request.example_choices.extend([tuning_pb2.ChoiceList(choices=["a", "b"])] * len(TEXTS))
    return request


def _neither_choice_form() -> tuning_pb2.EvaluateRequest:
    request = evaluate_request()
    request.ClearField("shared_choices")
    return request


def _over_message_limit() -> tuning_pb2.EvaluateRequest:
    # Over max_message_bytes but inside the transport's headroom: the service answers, naming the size.
    width = TEST_LIMITS.max_message_bytes // 4 + 16
    return evaluate_request(candidates(1, width))


CASES: dict[str, tuple[Callable[[], tuning_pb2.EvaluateRequest], str]] = {
    "candidate bytes of the wrong length": (_short_bytes, "candidates"),
    "dimension not the adapter's": (lambda: evaluate_request(candidates(2, DIMENSION - 1)), "dimension"),
    "NaN in a candidate": (_nan, "candidates[1]"),
    "inf in a candidate": (_inf, "candidates[0]"),
    "a candidate value beyond max_candidate_abs": (
        lambda: evaluate_request(np.array([[0.1] * DIMENSION, [1e30] * DIMENSION], np.float32)),
        "candidates[1]",
    ),
    "zero candidates": (_zero_candidates, "num_candidates"),
    "too many candidates": (
        lambda: evaluate_request(candidates(TEST_LIMITS.max_candidates + 1)),
        "num_candidates",
    ),
    "no texts": (lambda: evaluate_request(texts=[]), "texts"),
    "too many texts": (
        lambda: evaluate_request(texts=["Review: ok"] * (TEST_LIMITS.max_examples + 1)),
        "texts",
    ),
    "empty text": (lambda: evaluate_request(texts=["Review: fine", ""]), "texts[1]"),
    "blank text": (lambda: evaluate_request(texts=["   \n"]), "texts[0]"),
    "text over max_text_chars": (
        lambda: evaluate_request(texts=["x" * (TEST_LIMITS.max_text_chars + 1)]),
        "texts[0]",
    ),
    "text over max_text_tokens": (lambda: evaluate_request(texts=["Review: ok", "§¶" * 100]), "texts[1]"),
    "unknown adapter": (lambda: evaluate_request(adapter="cbpx"), "adapter"),
    "no choices": (lambda: evaluate_request(choices=[]), "shared_choices"),
    "too many choices": (
        lambda: evaluate_request(choices=[f" {w}" for w in "abcdefgh"[: TEST_LIMITS.max_choices + 1]]),
        "shared_choices",
    ),
    "empty choice string": (lambda: evaluate_request(choices=[" yes", ""]), "shared_choices[1]"),
    "choice over max_choice_tokens": (
        lambda: evaluate_request(choices=[" yes", "§¶" * 8]),
        "shared_choices[1]",
    ),
    "empty per-example choice": (
        lambda: evaluate_request(example_choices=[[" yes", " no"], ["", " no"]]),
        "example_choices[1][0]",
    ),
    "per-example choice lists not one per text": (
        lambda: evaluate_request(example_choices=[[" yes", " no"]] * 3),
        "example_choices",
    ),
    "both choice forms": (_both_choice_forms, "shared_choices"),
    "neither choice form": (_neither_choice_form, "shared_choices"),
    "unknown scoring mode": (lambda: evaluate_request(mode=7), "mode"),
    "too many sequences": (
        lambda: evaluate_request(
            candidates(4), choices=[" a", " b", " c", " d"], mode=tuning_pb2.SCORING_MODE_FULL_CHOICE
        ),
        "num_candidates",
    ),
    "cue over max_text_chars": (lambda: evaluate_request(cue="x" * (TEST_LIMITS.max_text_chars + 1)), "cue"),
    "choice over max_choice_chars": (
        lambda: evaluate_request(choices=[" yes", "x" * (TEST_LIMITS.max_choice_chars + 1)]),
        "shared_choices[1]",
    ),
    "per-example choice over max_choice_chars": (
        lambda: evaluate_request(example_choices=[[" yes", " no"], [" no", "y" * 1000]]),
        "example_choices[1][1]",
    ),
    "message over max_message_bytes": (_over_message_limit, "request"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_request_names_its_field(stub: tuning_pb2_grpc.TuningStub, case: str) -> None:
    make, field = CASES[case]
    failed = call_fails(stub.Evaluate, make())
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.message.startswith(f"{field}: "), failed.message
    assert len(failed.field_violations) == 1
    assert failed.field_violations[0][0] == field
    assert failed.field_violations[0][1]
    # The server still serves after refusing.
    response = stub.Evaluate(evaluate_request(), timeout=20)
    assert response.num_candidates == 2


def test_message_over_limit_names_the_size(stub: tuning_pb2_grpc.TuningStub) -> None:
    request = _over_message_limit()
    failed = call_fails(stub.Evaluate, request)
    assert str(request.ByteSize()) in failed.message
    assert str(TEST_LIMITS.max_message_bytes) in failed.message


def test_message_beyond_transport_headroom_is_refused(stub: tuning_pb2_grpc.TuningStub) -> None:
    width = (TEST_LIMITS.max_message_bytes + 2 * 1024 * 1024) // 4
    failed = call_fails(stub.Evaluate, evaluate_request(candidates(1, width)))
    assert failed.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.Evaluate(evaluate_request(), timeout=20).num_candidates == 2


def test_adapter_error_lists_known_adapters(stub: tuning_pb2_grpc.TuningStub) -> None:
    failed = call_fails(stub.Evaluate, evaluate_request(adapter="cbpx"))
    assert "none" in failed.message and "bbt" in failed.message


# The cases whose limit needs the tokenizer: only the engine can check them.
TOKEN_LIMITS = {"text over max_text_tokens", "choice over max_choice_tokens"}


def test_every_other_limit_is_checked_before_the_call_is_queued(engine: ScoringEngine) -> None:
    """Finding 6 of #22: limits applied only in the engine's first step, so a bad request waited in
    the queue (on Ray: was pickled to a replica first). With the engine held and the one queue place
    taken, every bad request is still answered INVALID_ARGUMENT naming its field, never "busy"."""
    gated = GatedEngine(engine)
    with (
        serve_in_background(gated, plain_settings(max_queued_requests=1)) as target,  # type: ignore[arg-type]
        grpc.insecure_channel(target) as channel,
        ThreadPoolExecutor(2) as pool,
    ):
        stub = tuning_pb2_grpc.TuningStub(channel)
        try:
            running = pool.submit(stub.Evaluate, evaluate_request(), timeout=30)
            assert gated.entered.wait(10)
            queued = pool.submit(stub.Evaluate, evaluate_request(candidates(1)), timeout=30)
            threading.Event().wait(0.3)  # let it take the queue's one place
            assert call_fails(stub.Evaluate, evaluate_request()).code == grpc.StatusCode.RESOURCE_EXHAUSTED
            for case, (make, field) in CASES.items():
                if case in TOKEN_LIMITS:
                    continue
                failed = call_fails(stub.Evaluate, make())
                assert (failed.code, failed.field_violations[0][0]) == (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    field,
                ), case
        finally:
            gated.release.set()
        assert running.result().num_candidates == 2 and queued.result().num_candidates == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: evaluate_request(texts=[""] * 7), "texts: 7 texts exceed the limit of 6"),
        (
            lambda: evaluate_request(choices=[" a"] * 5),
            "shared_choices: 5 choices exceed the limit of 4",
        ),
        (
            lambda: evaluate_request(example_choices=[[" a"], [" b"] * 5]),
            "example_choices[1]: 5 choices exceed the limit of 4",
        ),
        (
            lambda: evaluate_request(choices=[" a", "b" * 257]),
            "shared_choices[1]: 257 characters exceed the limit of 256",
        ),
    ],
)
def test_serde_checks_counts_and_lengths_on_the_wire_message(make, message: str) -> None:
    """Finding 6 of #22: serde copied ``request.texts`` (8M empty texts: +312 MiB) before any count
    check. One message per limit, naming the field."""
    with pytest.raises(InvalidRequest) as caught:
        serde.to_score_request(make(), TEST_LIMITS)
    assert str(caught.value) == message
