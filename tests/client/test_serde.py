"""serde: the one place proto messages are built and read; choices go on the wire as they were stated."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from cbpt.client.errors import ClientError, RequestRejected
from cbpt.client.rpc import sdk, serde
from cbpt.client.rpc.sdk import TuningClient
from cbpt.common import info
from cbpt.common.choices import Choices
from cbpt.common.tasks import scoring, task_format
from cbpt.common.wire import pack_floats
from cbpt.v1 import tuning_pb2

CLIENT = Path(__file__).resolve().parents[2] / "client"
COMMON = CLIENT.parent / "common"
SERVER = CLIENT.parent / "server"


def _on_the_wire(request: tuning_pb2.EvaluateRequest) -> tuning_pb2.EvaluateRequest:
    """The request as a server parses it, so field presence is what was serialised."""
    return tuning_pb2.EvaluateRequest.FromString(request.SerializeToString())


def test_one_text_with_its_own_list_keeps_example_choices() -> None:
    candidates = np.ones((2, 4), dtype=np.float32)
    stated = Choices.of([[" yes", " no"]])  # one text, one list of its own: per example, not shared
    request = _on_the_wire(
        serde.evaluate_request_to_proto("bbt", candidates, ["Is it?"], stated, "full_choice", "\nA:")
    )
    assert not request.HasField("shared_choices")
    assert [list(options.choices) for options in request.example_choices] == [[" yes", " no"]]
    assert request.mode == tuning_pb2.SCORING_MODE_FULL_CHOICE and request.cue == "\nA:"
    assert request.num_candidates == 2 and request.dimension == 4
    assert request.candidates == pack_floats(candidates)

    shared = _on_the_wire(
        serde.evaluate_request_to_proto("bbt", candidates, ["Is it?"], Choices.of([" yes", " no"]))
    )
    assert shared.HasField("shared_choices") and list(shared.shared_choices.choices) == [" yes", " no"]
    assert len(shared.example_choices) == 0 and shared.mode == tuning_pb2.SCORING_MODE_FIRST_TOKEN


class RequestRecorder(grpc.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.evaluate_requests: list[tuning_pb2.EvaluateRequest] = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        if client_call_details.method.endswith("/Evaluate"):
            self.evaluate_requests.append(_on_the_wire(request))
        return continuation(client_call_details, request)


def test_the_client_sends_choices_as_stated(server: str) -> None:
    recorder = RequestRecorder()
    vector = np.zeros(16, dtype=np.float32)
    with TuningClient(server, interceptors=[recorder]) as client:
        own = client.predict("bbt", vector, ["Review: fine\nSentiment:"], [[" positive", " negative"]])
        shared = client.predict("bbt", vector, ["Review: fine\nSentiment:"], [" positive", " negative"])
        typed = client.predict(
            "bbt", vector, ["Review: fine\nSentiment:"], Choices.shared_by_all([" positive"])
        )
    per_example, shared_request, typed_request = recorder.evaluate_requests
    assert not per_example.HasField("shared_choices") and len(per_example.example_choices) == 1
    assert shared_request.HasField("shared_choices") and len(shared_request.example_choices) == 0
    assert list(typed_request.shared_choices.choices) == [" positive"]
    np.testing.assert_allclose(own, shared, atol=1e-6)  # the same list scores the same either way
    assert typed.shape == (1, 1)


def test_evaluate_refuses_choices_it_cannot_state(client: TuningClient) -> None:
    population = np.zeros((1, 16), dtype=np.float32)
    with pytest.raises(RequestRejected, match="choices: 2 choice lists for 3 texts"):
        client.evaluate("bbt", population, ["a", "b", "c"], [[" x"], [" y"]])
    with pytest.raises(RequestRejected, match="one list of strings per example"):
        client.evaluate("bbt", population, ["a", "b"], [" x", [" y"]])
    with pytest.raises(RequestRejected, match="at least one choice"):
        client.evaluate("bbt", population, ["a"], [])


def test_server_info_keeps_each_adapters_placement(client: TuningClient) -> None:
    message = tuning_pb2.ServerInfo(
        model_id="m",
        model_fingerprint="f" * 64,
        hidden_size=32,
        adapters=[tuning_pb2.AdapterInfo(name="bbt-cue", method="bbt", dimension=8, placement="on_cue")],
        limits=tuning_pb2.Limits(max_candidates=3, max_sequences=12),
    )
    info = serde.server_info_from_proto(message)
    assert info.adapter("bbt-cue").placement == "on_cue" and info.adapter("bbt-cue").dimension == 8
    assert info.limits.max_candidates == 3 and info.limits.max_examples == 0
    served = {adapter.name: adapter.placement for adapter in client.info().adapters}
    assert served["bbt"] == "prefix" and set(served.values()) <= {"prefix", "before_cue", "on_cue"}


def test_ragged_responses_are_padded_and_checked() -> None:
    counts = [2, 3, 1]
    flat = np.arange(2 * sum(counts), dtype=np.float32)
    response = tuning_pb2.EvaluateResponse(
        num_candidates=2, num_examples=3, log_probs=pack_floats(flat), tokens_processed=9, server_seconds=0.5
    )
    scores = serde.scores_from_proto(response, 2, counts)
    assert (
        scores.log_probs.shape == (2, 3, 3) and scores.tokens_processed == 9 and scores.server_seconds == 0.5
    )
    np.testing.assert_array_equal(scores.log_probs[0, 1], [2, 3, 4])
    assert np.isneginf(scores.log_probs[1, 0, 2]) and scores.log_probs[1, 2, 0] == 11
    with pytest.raises(ClientError, match="server answered 2 x 3, expected 2 x 2"):
        serde.scores_from_proto(response, 2, counts[:2])
    with pytest.raises(ClientError, match="log_probs: 48 bytes"):
        serde.scores_from_proto(response, 2, [2, 3, 2])


def test_request_sizes_match_the_requests() -> None:
    choices = Choices.per_example([[" a", " bb"], [" c"]])
    texts = ["first text", "the second text"]
    candidates = np.zeros((3, 5), dtype=np.float32)
    whole = serde.evaluate_request_to_proto("bbt", candidates, texts, choices, "first_token", "\nA:")
    no_texts = serde.evaluate_request_to_proto(
        "bbt", candidates, [], Choices.per_example([]), "first_token", "\nA:"
    )
    assert whole.ByteSize() - no_texts.ByteSize() == sum(serde.example_bytes(texts, choices))
    base = serde.request_base_bytes("bbt", 5, choices, "first_token", "\nA:")
    assert base + len(pack_floats(candidates)) + 2 >= no_texts.ByteSize()  # never an undercount


def test_one_type_each_for_the_scoring_mode_and_the_adapter_description() -> None:
    """Both sides and the task format use the one ``ScoringMode`` and the one ``AdapterInfo``."""
    from cbpt.server.engine import types as engine_types

    assert sdk.ScoringMode is task_format.ScoringMode is scoring.ScoringMode is engine_types.ScoringMode
    assert [mode.value for mode in scoring.ScoringMode] == ["first_token", "full_choice"]
    assert engine_types.AdapterInfo is info.AdapterInfo
    sources = [
        path.read_text(encoding="utf-8")
        for folder in (CLIENT, COMMON, SERVER)
        for path in folder.rglob("*.py")
    ]
    assert sum(source.count('"full_choice"') for source in sources) == 1
    assert not any("class AdapterDescription" in source for source in sources)


def test_a_mode_is_its_value_everywhere_it_is_written() -> None:
    mode = task_format.TaskFormat(template="{text}", choices={"a": " a"}, mode="full_choice").mode
    assert mode is scoring.ScoringMode.FULL_CHOICE and f"{mode}" == str(mode) == "full_choice"
    assert json.dumps({"mode": mode}) == '{"mode": "full_choice"}'
    request = serde.evaluate_request_to_proto(
        "bbt", np.zeros((1, 2), np.float32), ["t"], Choices.of([" a"]), mode
    )
    assert request.mode == tuning_pb2.SCORING_MODE_FULL_CHOICE
