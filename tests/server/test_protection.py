"""Provider protection: rounded or keyed-noisy log-probs, and per-tenant budgets of scored sequences."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import numpy as np
import pytest

from cbpt.common.wire import unpack_floats
from cbpt.server.engine import ScoreResult, ScoringEngine
from cbpt.server.errors import BudgetExhausted
from cbpt.server.front.app import serve_in_background
from cbpt.server.front.budgets import EvaluationBudgets
from cbpt.server.front.keys import KeyStore, add_key
from cbpt.server.front.protection import ScoreProtection
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import (
    TEXTS,
    call_fails,
    candidates,
    evaluate_request,
    plain_settings,
    serde_request,
)

ONE = TEXTS[:1]
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
    request = serde_request(
        evaluate_request(candidates(1), example_choices=[[" a", " b"], [" x", " y", " z"]])
    )
    assert ScoreProtection().apply(result) is result
    noisy = ScoreProtection(decimals=3, noise=1.0, seed=0).apply(result, request, "alice").log_probs
    assert noisy[0, 0, 2] == -np.inf and np.isfinite(noisy[0, 1]).all()


def _cell_error(protection: ScoreProtection, request, tenant: str = "alice") -> np.ndarray:
    """The log-odds error of the first choice against the second, per candidate and example."""
    exact = np.tile(np.log([0.7, 0.3]).astype(np.float32), (len(request.candidates), len(request.texts), 1))
    noisy = protection.apply(ScoreResult(exact, (2,) * len(request.texts), 1, 0.0), request, tenant).log_probs
    return (noisy[..., 0] - noisy[..., 1]) - (exact[..., 0] - exact[..., 1])


def test_averaging_repeats_does_not_shrink_the_noise() -> None:
    """512 copies of one text in one call, or one query sent again, return the same noise: their mean
    is as far off as one answer (independent noise per cell cut sigma=0.5's error from 0.57 to 0.04)."""
    protection = ScoreProtection(noise=0.5, seed=1)
    copies = serde_request(evaluate_request(candidates(1), texts=["Review: fine\nSentiment:"] * 512))
    errors = _cell_error(protection, copies)
    np.testing.assert_array_equal(errors, errors[0, 0])  # every copy got the same noise...
    np.testing.assert_array_equal(_cell_error(protection, copies), errors)  # ... and so does a repeat
    assert abs(errors.mean()) == pytest.approx(abs(errors[0, 0])) and errors[0, 0] != 0
    # The noise is still noise: across different texts, candidates and tenants it is independent,
    # with the configured spread (the log-odds of two choices get sqrt(2) * sigma).
    texts = [f"Review: number {i}\nSentiment:" for i in range(400)]
    spread = _cell_error(protection, serde_request(evaluate_request(candidates(3), texts=texts)))
    assert 0.55 < spread.std() < 0.85 and abs(spread.mean()) < 0.1
    other_tenant = _cell_error(protection, serde_request(evaluate_request(candidates(3), texts=texts)), "bob")
    assert abs(np.corrcoef(spread.ravel(), other_tenant.ravel())[0, 1]) < 0.1


def test_the_noise_renews_with_the_window_and_the_server_secret() -> None:
    now = [1_000_000.0]
    protection = ScoreProtection(noise=0.5, seed=1, clock=lambda: now[0])
    request = serde_request(evaluate_request(candidates(2)))
    today = _cell_error(protection, request)
    now[0] += 86400
    assert not np.allclose(_cell_error(protection, request), today)
    assert not np.allclose(_cell_error(ScoreProtection(noise=0.5), request), today)  # a fresh secret


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
    """(One text per call here, so each call costs its candidates.)"""
    path, bearer = budget_keys
    usage = tmp_path / "usage.json"
    settings = plain_settings(api_keys_file=path, evaluations_per_day=4, usage_file=usage)
    with serve_in_background(engine, settings) as target, grpc.insecure_channel(target) as channel:
        stub = tuning_pb2_grpc.TuningStub(channel)
        two = evaluate_request(candidates(2), texts=ONE)
        assert stub.Evaluate(two, metadata=bearer["alice"], timeout=20).num_candidates == 2
        refused = call_fails(stub.Evaluate, two, metadata=bearer["alice"])
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "used 2 of its 3 evaluations for today" in refused.message
        assert refused.retry_seconds is not None and 0 < refused.retry_seconds <= 86400
        assert stub.Evaluate(evaluate_request(candidates(1), texts=ONE), metadata=bearer["alice"], timeout=20)
        # A total budget never renews by itself.
        assert stub.Evaluate(two, metadata=bearer["bob"], timeout=20).num_candidates == 2
        spent = call_fails(stub.Evaluate, evaluate_request(candidates(1), texts=ONE), metadata=bearer["bob"])
        assert spent.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "in total" in spent.message
        # A call that is not answered is refunded: carol's call with a text over the token limit
        # (found by the engine, after the charge) costs nothing.
        too_long = evaluate_request(candidates(4), texts=["x" * 299])
        bad = call_fails(stub.Evaluate, too_long, metadata=bearer["carol"])
        assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
        assert stub.Evaluate(evaluate_request(candidates(4), texts=ONE), metadata=bearer["carol"], timeout=20)
    saved = json.loads(usage.read_text())["usage"]
    assert (saved["alice"]["today"], saved["bob"]["total"], saved["carol"]["total"]) == (3, 2, 4)


def test_a_call_is_charged_every_sequence_the_engine_scores(engine, budget_keys) -> None:
    """The unit is candidates x examples (x choices in full-choice mode, where each choice is run):
    512 texts in one call are 512 evaluations of a candidate, not one."""
    path, bearer = budget_keys
    settings = plain_settings(api_keys_file=path, evaluations_per_day=8)
    with serve_in_background(engine, settings) as target, grpc.insecure_channel(target) as channel:
        stub = tuning_pb2_grpc.TuningStub(channel)
        first = tuning_pb2.ScoringMode.SCORING_MODE_FIRST_TOKEN
        full = tuning_pb2.ScoringMode.SCORING_MODE_FULL_CHOICE
        assert stub.Evaluate(
            evaluate_request(candidates(2), mode=first), metadata=bearer["carol"], timeout=20
        )
        refused = call_fails(stub.Evaluate, evaluate_request(candidates(3)), metadata=bearer["carol"])
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "used 4 of its 8 evaluations for today" in refused.message  # 2 candidates x 2 texts
        assert "this call needs 6" in refused.message  # 3 candidates x 2 texts
        whole = evaluate_request(candidates(1), mode=full)  # 1 candidate x 2 texts x 2 choices = 4
        assert stub.Evaluate(whole, metadata=bearer["carol"], timeout=20)
        spent = call_fails(
            stub.Evaluate, evaluate_request(candidates(1), texts=ONE), metadata=bearer["carol"]
        )
        assert spent.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "used 8 of its 8" in spent.message


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
