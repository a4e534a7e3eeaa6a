"""Every malformed request is INVALID_ARGUMENT naming its field, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest

from cbpt.common.info import AdapterInfo
from cbpt.server.engine import ScoringEngine
from cbpt.server.errors import InvalidRequest
from cbpt.server.front import serde
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import (
    DIMENSION,
    TEST_LIMITS,
    TEXTS,
    call_fails,
    candidates,
    evaluate_request,
    full_queue,
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
    with full_queue(engine) as full:
        assert call_fails(full.stub.Evaluate, evaluate_request()).code == grpc.StatusCode.RESOURCE_EXHAUSTED
        for case, (make, field) in CASES.items():
            if case in TOKEN_LIMITS:
                continue
            failed = call_fails(full.stub.Evaluate, make())
            assert (failed.code, failed.field_violations[0][0]) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                field,
            ), case
    assert full.running.result().num_candidates == 2 and full.queued.result().num_candidates == 1


SERVED = {
    "bbt": AdapterInfo("bbt", "bbt", DIMENSION, 4, "", "", "prefix"),
    "bbt-cue": AdapterInfo("bbt-cue", "bbt", DIMENSION, 4, "", "", "on_cue"),
}
MESSAGES: dict[str, tuple[Callable[[], tuning_pb2.EvaluateRequest], str]] = {
    "too many texts": (lambda: evaluate_request(texts=[""] * 7), "texts: 7 texts exceed the limit of 6"),
    "no texts": (lambda: evaluate_request(texts=[]), "texts: at least one text is required"),
    "blank text": (lambda: evaluate_request(texts=["ok", "  "]), "texts[1]: empty text"),
    "text over max_text_chars": (
        lambda: evaluate_request(texts=["x" * 301]),
        "texts[0]: 301 characters exceed the limit of 300",
    ),
    "unknown adapter": (
        lambda: evaluate_request(adapter="cbpx"),
        "adapter: unknown adapter 'cbpx'; known: bbt, bbt-cue",
    ),
    "zero candidates": (_zero_candidates, "num_candidates: at least one candidate is required"),
    "too many candidates": (
        lambda: evaluate_request(candidates(5)),
        "num_candidates: 5 candidates exceed the limit of 4",
    ),
    "dimension not the adapter's": (
        lambda: evaluate_request(candidates(1, 15)),
        "dimension: length 15, expected 16 for adapter 'bbt'",
    ),
    "candidate bytes of the wrong length": (
        _short_bytes,
        "candidates: 124 bytes, expected 128 (2 x 16 float32)",
    ),
    "NaN in a candidate": (_nan, "candidates[1]: contains NaN or inf"),
    "a candidate value beyond max_candidate_abs": (
        lambda: evaluate_request(np.array([[0.5] * DIMENSION, [0.0] * 15 + [-1000.5]], np.float32)),
        "candidates[1]: value 1000.5 exceeds the bound of 1000 in absolute value (max_candidate_abs): "
        "the soft prompt would only saturate the model",
    ),
    "unknown scoring mode": (lambda: evaluate_request(mode=7), "mode: unknown scoring mode 7"),
    "cue over max_text_chars": (
        lambda: evaluate_request(cue="x" * 301),
        "cue: 301 characters exceed the limit of 300",
    ),
    "no cue for an on-cue adapter": (
        lambda: evaluate_request(adapter="bbt-cue"),
        "cue: adapter 'bbt-cue' adds its prompt onto the answer cue; give one",
    ),
    "no choices": (lambda: evaluate_request(choices=[]), "shared_choices: at least one choice is required"),
    "too many choices": (
        lambda: evaluate_request(choices=[" a"] * 5),
        "shared_choices: 5 choices exceed the limit of 4",
    ),
    "empty choice string": (
        lambda: evaluate_request(choices=[" a", ""]),
        "shared_choices[1]: empty choice string",
    ),
    "choice over max_choice_chars": (
        lambda: evaluate_request(choices=[" a", "b" * 257]),
        "shared_choices[1]: 257 characters exceed the limit of 256",
    ),
    "per-example choice lists not one per text": (
        lambda: evaluate_request(example_choices=[[" a"], [" b"], [" c"]]),
        "example_choices: 3 choice lists for 2 texts; send one per text",
    ),
    "too many per-example choices": (
        lambda: evaluate_request(example_choices=[[" a"], [" b"] * 5]),
        "example_choices[1]: 5 choices exceed the limit of 4",
    ),
    "empty per-example choice": (
        lambda: evaluate_request(example_choices=[[" a"], [" b", ""]]),
        "example_choices[1][1]: empty choice string",
    ),
    "too many sequences": (
        lambda: evaluate_request(
            candidates(4), choices=[" a", " b", " c", " d"], mode=tuning_pb2.SCORING_MODE_FULL_CHOICE
        ),
        "num_candidates: candidates x examples (x choices in full-choice mode) = 32 exceeds the limit of 24; "
        "split the request",
    ),
}


@pytest.mark.parametrize("case", list(MESSAGES))
def test_the_door_checks_each_limit_once_with_one_message(case: str) -> None:
    """Finding 6 of #22: serde copied ``request.texts`` (8M empty texts: +312 MiB) before any count
    check. #23: each limit is checked once, at the door, with one message naming the field (the
    engine keeps only the token limits, in the same wording)."""
    make, message = MESSAGES[case]
    with pytest.raises(InvalidRequest) as caught:
        serde.score_request_from_proto(make(), TEST_LIMITS, SERVED)
    assert str(caught.value) == message
    assert message.startswith(f"{caught.value.field}: ")


def test_the_candidate_bound_is_inclusive_and_stated(engine: ScoringEngine) -> None:
    at_bound = np.full((1, DIMENSION), -TEST_LIMITS.max_candidate_abs, np.float32)
    request = serde.score_request_from_proto(evaluate_request(at_bound), TEST_LIMITS, SERVED)
    np.testing.assert_array_equal(request.candidates, at_bound)
    assert engine.info().limits.max_candidate_abs == 1000.0
