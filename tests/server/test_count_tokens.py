"""CountTokens: the engine's own token counts of texts, validated like Evaluate's, with no scoring and no text logged."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from cbpt.server.app import serve_in_background
from cbpt.server.engine import ScoringEngine
from cbpt.server.keys import add_key
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import TEST_LIMITS, call_fails, plain_settings

TEXTS = ["Review: a gripping, funny and moving film", "so dull", "Answer:"]


def _count(stub: tuning_pb2_grpc.TuningStub, texts: list[str]) -> list[int]:
    return list(stub.CountTokens(tuning_pb2.CountTokensRequest(texts=texts), timeout=20).counts)


def test_counts_are_the_tokens_evaluate_would_run(
    stub: tuning_pb2_grpc.TuningStub, engine: ScoringEngine
) -> None:
    tokenizer = engine.bundle.tokenizer
    expected = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in TEXTS]
    assert _count(stub, TEXTS) == expected
    long_text = "word " * 50  # more tokens than max_text_tokens (48): counted, not refused
    assert _count(stub, [long_text])[0] > TEST_LIMITS.max_text_tokens


@pytest.mark.parametrize(
    ("texts", "field", "fragment"),
    [
        ([], "texts", "at least one text"),
        (["a"] * (TEST_LIMITS.max_examples + 1), "texts", "exceed the limit"),
        (["fine", " "], "texts[1]", "empty text"),
        (["x" * (TEST_LIMITS.max_text_chars + 1)], "texts[0]", "characters exceed the limit"),
    ],
)
def test_invalid_requests_name_the_field(stub: tuning_pb2_grpc.TuningStub, texts, field, fragment) -> None:
    failed = call_fails(stub.CountTokens, tuning_pb2.CountTokensRequest(texts=texts))
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    (name, description), *_ = failed.field_violations
    assert name == field and fragment in description


def test_an_api_key_is_required_and_no_text_is_logged(
    engine: ScoringEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys.json"
    key = add_key(keys, "alice")
    with (
        serve_in_background(engine, plain_settings(api_keys_file=keys)) as target,
        grpc.insecure_channel(target) as channel,
    ):
        stub = tuning_pb2_grpc.TuningStub(channel)
        refused = call_fails(stub.CountTokens, tuning_pb2.CountTokensRequest(texts=TEXTS))
        assert refused.code == grpc.StatusCode.UNAUTHENTICATED
        with caplog.at_level(logging.DEBUG):
            response = stub.CountTokens(
                tuning_pb2.CountTokensRequest(texts=["Zebulon owes me money"]),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=20,
            )
    assert len(response.counts) == 1
    assert "count tokens" in caplog.text and "Zebulon" not in caplog.text
