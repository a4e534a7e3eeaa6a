"""GetServerInfo and Evaluate over a real loopback server: contents, packing and the documented fields
only."""

from __future__ import annotations

import grpc
import numpy as np
from google.protobuf import unknown_fields

from cbpt.common.wire import unpack_floats
from cbpt.server import __version__
from cbpt.server.engine import ScoreRequest, ScoringEngine, ScoringMode
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import CHOICES, DIMENSION, TEST_LIMITS, candidates, evaluate_request

RESPONSE_FIELDS = {"num_candidates", "num_examples", "log_probs", "tokens_processed", "server_seconds"}


def test_server_info_describes_engine(stub: tuning_pb2_grpc.TuningStub, engine: ScoringEngine) -> None:
    info = stub.GetServerInfo(tuning_pb2.GetServerInfoRequest(), timeout=20)
    expected = engine.info()
    assert info.model_id == expected.model_id
    assert info.model_fingerprint == expected.fingerprint
    assert info.hidden_size == expected.hidden_size
    assert info.server_version == __version__
    assert [(a.name, a.method, a.dimension, a.prompt_length, a.placement) for a in info.adapters] == [
        (a.name, a.method, a.dimension, a.prompt_length, a.placement) for a in expected.adapters
    ]
    assert {a.name: a.dimension for a in info.adapters}["bbt"] == DIMENSION
    assert info.limits.max_candidates == TEST_LIMITS.max_candidates
    assert info.limits.max_message_bytes == TEST_LIMITS.max_message_bytes
    assert info.limits.max_sequences == TEST_LIMITS.max_sequences
    assert info.limits.max_candidate_abs == TEST_LIMITS.max_candidate_abs  # the stated bound (finding 8)


def test_ragged_per_example_choices_match_engine(
    stub: tuning_pb2_grpc.TuningStub, engine: ScoringEngine
) -> None:
    z = candidates(3, seed=4)
    texts = ["Question: is the sky blue? Answer:", "Review: a funny film\nSentiment:"]
    lists = [[" yes", " no"], [" positive", " negative", " neutral"]]
    response = stub.Evaluate(evaluate_request(z, texts=texts, example_choices=lists), timeout=20)

    assert (response.num_candidates, response.num_examples) == (3, 2)
    ragged = unpack_floats(response.log_probs, (3, 5), "log_probs")  # 2 + 3 choices per candidate
    direct = engine.score(ScoreRequest("bbt", z, texts, lists, ScoringMode.FIRST_TOKEN))
    assert direct.log_probs.shape == (3, 2, 3)
    np.testing.assert_allclose(ragged[:, :2], direct.log_probs[:, 0, :2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ragged[:, 2:], direct.log_probs[:, 1, :3], rtol=1e-5, atol=1e-6)
    assert np.isfinite(ragged).all()  # the -inf pads were stripped
    np.testing.assert_allclose(np.exp(ragged[:, :2]).sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.exp(ragged[:, 2:]).sum(axis=1), 1.0, rtol=1e-5)
    assert response.tokens_processed == direct.tokens_processed > 0
    assert response.server_seconds > 0


def test_shared_choices_and_unspecified_mode_is_first_token(stub: tuning_pb2_grpc.TuningStub) -> None:
    z = candidates(2, seed=1)
    unspecified = stub.Evaluate(evaluate_request(z), timeout=20)
    first = stub.Evaluate(evaluate_request(z, mode=tuning_pb2.SCORING_MODE_FIRST_TOKEN), timeout=20)
    assert unspecified.log_probs == first.log_probs
    scores = unpack_floats(first.log_probs, (2, 2, 2), "log_probs")
    np.testing.assert_allclose(np.exp(scores).sum(axis=-1), 1.0, rtol=1e-5)
    # Different candidates give different scores: the vector reaches the model.
    assert not np.allclose(scores[0], scores[1])


def test_full_choice_mode_and_zero_shot_adapter(stub: tuning_pb2_grpc.TuningStub) -> None:
    full = stub.Evaluate(
        evaluate_request(choices=[" positive", " negative film"], mode=tuning_pb2.SCORING_MODE_FULL_CHOICE),
        timeout=20,
    )
    assert len(full.log_probs) == 2 * 2 * 2 * 4
    zero_shot = stub.Evaluate(evaluate_request(np.zeros((1, 0), np.float32), adapter="none"), timeout=20)
    assert (zero_shot.num_candidates, len(zero_shot.log_probs)) == (1, 2 * 2 * 4)


def _raw(channel: grpc.Channel, method: str, request) -> bytes:
    call = channel.unary_unary(
        f"/cbpt.v1.Tuning/{method}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=None,
    )
    return call(request, timeout=20)


def test_response_holds_only_documented_fields(channel: grpc.Channel) -> None:
    assert {f.name for f in tuning_pb2.EvaluateResponse.DESCRIPTOR.fields} == RESPONSE_FIELDS
    raw = _raw(channel, "Evaluate", evaluate_request(candidates(2)))
    response = tuning_pb2.EvaluateResponse.FromString(raw)
    assert len(unknown_fields.UnknownFieldSet(response)) == 0
    assert {f.name for f, _ in response.ListFields()} <= RESPONSE_FIELDS
    assert response.SerializeToString(deterministic=True) == raw
    # Every byte is accounted for: 2 candidates x 2 examples x 2 choices float32, plus small scalars.
    assert len(response.log_probs) == 2 * 2 * 2 * 4

    info = tuning_pb2.ServerInfo.FromString(_raw(channel, "GetServerInfo", tuning_pb2.GetServerInfoRequest()))
    assert len(unknown_fields.UnknownFieldSet(info)) == 0


def test_cue_reaches_the_engine(stub: tuning_pb2_grpc.TuningStub, engine: ScoringEngine) -> None:
    z = candidates(2, seed=2)
    texts = ["Review: a funny film", "Review: far too long"]
    with_cue = stub.Evaluate(evaluate_request(z, texts=texts, cue="\nSentiment:"), timeout=20)
    without = stub.Evaluate(evaluate_request(z, texts=texts), timeout=20)
    direct = engine.score(ScoreRequest("bbt", z, texts, CHOICES, ScoringMode.FIRST_TOKEN, cue="\nSentiment:"))
    scores = unpack_floats(with_cue.log_probs, (2, 2, 2), "log_probs")
    np.testing.assert_allclose(scores, direct.log_probs, rtol=1e-5, atol=1e-6)
    assert with_cue.log_probs != without.log_probs


def test_each_call_reports_the_text_state_cache_bytes(stub, caplog) -> None:
    """Finding 9: the memory the cache holds was reported nowhere."""
    import logging

    caplog.set_level(logging.INFO)
    stub.Evaluate(evaluate_request(), timeout=20)
    (line,) = [r for r in caplog.records if r.getMessage() == "evaluate" and r.__dict__.get("code") == "OK"]
    assert isinstance(line.cache_bytes, int)  # type: ignore[attr-defined]
