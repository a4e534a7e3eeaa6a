"""Provider protection: rounded or noisy log-probs, and per-key budgets of candidate evaluations."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import numpy as np
import pytest

from cbpt.common.wire import unpack_floats
from cbpt.server.app import serve_in_background
from cbpt.server.budgets import EvaluationBudgets
from cbpt.server.engine import ScoreResult, ScoringEngine
from cbpt.server.errors import BudgetExhausted
from cbpt.server.keys import KeyStore, add_key
from cbpt.server.protection import ScoreProtection
from cbpt.v1 import tuning_pb2_grpc
from tests.server.helpers import call_fails, candidates, evaluate_request, plain_settings, serde_request

PER_EXAMPLE = evaluate_request(candidates(3), example_choices=[[" yes", " no", " maybe"], [" a", " b"]])


def _scores(response) -> np.ndarray:
    return unpack_floats(response.log_probs, (len(response.log_probs) // 4,), "log_probs")


def _exact(engine: ScoringEngine) -> np.ndarray:
    result = engine.score(serde_request(PER_EXAMPLE))
    return result.log_probs[np.isfinite(result.log_probs)]


def test_score_decimals_round_what_leaves_the_server(engine: ScoringEngine) -> None:
    with (
        serve_in_background(engine, plain_settings(score_decimals=2)) as target,
        grpc.insecure_channel(target) as ch,
    ):
        scores = _scores(tuning_pb2_grpc.TuningStub(ch).Evaluate(PER_EXAMPLE, timeout=20))
    np.testing.assert_allclose(scores * 100, np.round(scores * 100), atol=1e-3)
    np.testing.assert_allclose(scores, _exact(engine), atol=0.005 + 1e-6)


def test_score_noise_blurs_but_stays_normalised_and_is_seeded(engine: ScoringEngine) -> None:
    runs = []
    for _ in range(2):
        settings = plain_settings(score_noise=0.5, score_noise_seed=3)
        with serve_in_background(engine, settings) as target, grpc.insecure_channel(target) as channel:
            runs.append(_scores(tuning_pb2_grpc.TuningStub(channel).Evaluate(PER_EXAMPLE, timeout=20)))
    exact = _exact(engine)
    assert np.abs(runs[0] - exact).max() > 0.05  # really blurred
    np.testing.assert_array_equal(runs[0], runs[1])  # a fixed seed reproduces (benchmarks)
    for candidate in runs[0].reshape(3, 5):  # 3 + 2 choices per candidate: each example sums to one
        for part in (candidate[:3], candidate[3:]):
            assert abs(np.logaddexp.reduce(part)) < 1e-5


def test_protection_leaves_padding_and_does_nothing_when_off() -> None:
    log_probs = np.array([[[np.log(0.5), np.log(0.5), -np.inf], np.log([0.2, 0.3, 0.5])]], np.float32)
    result = ScoreResult(log_probs, (2, 3), 10, 0.1)
    assert ScoreProtection().apply(result) is result
    noisy = ScoreProtection(decimals=3, noise=1.0, seed=0).apply(result).log_probs
    assert noisy[0, 0, 2] == -np.inf and np.isfinite(noisy[0, 1]).all()


# -- budgets ----------------------------------------------------------------------------------------
@pytest.fixture
def budget_keys(tmp_path: Path) -> tuple[Path, dict[str, list[tuple[str, str]]]]:
    path = tmp_path / "keys.json"
    keys = {
        "alice": add_key(path, "alice", evaluations_per_day=3),
        "bob": add_key(path, "bob", evaluations_total=2),
        "carol": add_key(path, "carol"),  # the server's default budget: 4 a day
    }
    return path, {name: [("authorization", f"Bearer {key}")] for name, key in keys.items()}


def test_budgets_refuse_with_resource_exhausted_and_a_retry_delay(engine, budget_keys, tmp_path) -> None:
    path, bearer = budget_keys
    usage = tmp_path / "usage.json"
    settings = plain_settings(api_keys_file=path, evaluations_per_day=4, usage_file=usage)
    with serve_in_background(engine, settings) as target, grpc.insecure_channel(target) as channel:
        stub = tuning_pb2_grpc.TuningStub(channel)
        two = evaluate_request(candidates(2))
        assert stub.Evaluate(two, metadata=bearer["alice"], timeout=20).num_candidates == 2
        refused = call_fails(stub.Evaluate, two, metadata=bearer["alice"])
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "used 2 of its 3 candidate evaluations for today" in refused.message
        assert refused.retry_seconds is not None and 0 < refused.retry_seconds <= 86400
        assert stub.Evaluate(evaluate_request(candidates(1)), metadata=bearer["alice"], timeout=20)
        # A total budget never renews by itself.
        assert stub.Evaluate(two, metadata=bearer["bob"], timeout=20).num_candidates == 2
        spent = call_fails(stub.Evaluate, evaluate_request(candidates(1)), metadata=bearer["bob"])
        assert spent.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "in total" in spent.message
        # A call that is not answered is refunded: carol's call with a text over the token limit
        # (found by the engine, after the charge) costs nothing.
        too_long = evaluate_request(candidates(4), texts=["x" * 299])
        bad = call_fails(stub.Evaluate, too_long, metadata=bearer["carol"])
        assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
        assert stub.Evaluate(evaluate_request(candidates(4)), metadata=bearer["carol"], timeout=20)
    saved = json.loads(usage.read_text())["usage"]
    assert (saved["alice"]["today"], saved["bob"]["total"], saved["carol"]["total"]) == (3, 2, 4)


def test_usage_survives_a_restart_and_the_day_rolls_over(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    add_key(path, "alice", evaluations_per_day=5, evaluations_total=8)
    store = KeyStore.from_file(path)
    now = [datetime(2026, 3, 1, 23, 0, tzinfo=timezone.utc)]
    budgets = EvaluationBudgets(store, usage_file=tmp_path / "usage.json", clock=lambda: now[0])
    budgets.charge("alice", 5)
    with pytest.raises(BudgetExhausted) as caught:
        budgets.charge("alice", 1)
    assert caught.value.retry_after == pytest.approx(3600)  # until midnight UTC
    budgets.save()
    restarted = EvaluationBudgets(store, usage_file=tmp_path / "usage.json", clock=lambda: now[0])
    with pytest.raises(BudgetExhausted):
        restarted.charge("alice", 1)
    now[0] += timedelta(hours=2)  # the next UTC day
    restarted.charge("alice", 3)
    with pytest.raises(BudgetExhausted, match="in total"):
        restarted.charge("alice", 1)
    assert restarted.used("alice").total == 8
