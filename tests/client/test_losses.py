"""Client-side losses, bias fitting, calibration and metrics (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from cbpt.common.losses import (
    accuracy,
    apply_bias,
    calibrate,
    compute_losses,
    confusion_matrix,
    cross_entropy,
    error_rate,
    fit_bias,
    hinge,
    macro_f1,
    normalise,
    predictions,
)


def _log_probs(probs: list[list[list[float]]]) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(probs, dtype=np.float64))


def test_cross_entropy_is_mean_negative_log_likelihood() -> None:
    log_probs = _log_probs([[[0.9, 0.1], [0.3, 0.7]], [[0.5, 0.5], [0.5, 0.5]]])
    labels = np.array([0, 1])
    expected = [-(np.log(0.9) + np.log(0.7)) / 2, np.log(2)]
    np.testing.assert_allclose(cross_entropy(log_probs, labels), expected)


def test_hinge_uses_margin_against_best_other_choice() -> None:
    log_probs = np.array([[[-0.1, -3.0, -2.0], [-1.0, -1.2, -3.0]]])
    labels = np.array([0, 0])
    # gaps: 1.9 (no loss with margin 1) and 0.2 (loss 0.8)
    np.testing.assert_allclose(hinge(log_probs, labels, margin=1.0), [0.4], atol=1e-6)


def test_error_rate_and_padding() -> None:
    # Second example has only two choices: the -inf pad must never be predicted.
    log_probs = np.array([[[-2.0, -0.5, -1.0], [-0.1, -3.0, -np.inf]]])
    labels = np.array([1, 0])
    assert predictions(log_probs).tolist() == [[1, 0]]
    np.testing.assert_allclose(error_rate(log_probs, labels), [0.0])
    assert np.isfinite(cross_entropy(log_probs, labels)).all()


def test_fit_bias_corrects_a_shifted_model() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=60)
    clean = np.full((60, 3), -3.0)
    clean[np.arange(60), labels] = 0.0
    shift = np.array([0.0, -4.0, 4.0])  # the model leans hard towards choice 2
    log_probs = normalise(clean + shift)[None]
    assert accuracy(predictions(log_probs[0]), labels) < 0.5
    bias = fit_bias(log_probs, labels)
    assert bias.shape == (1, 3) and bias[0, 0] == 0.0
    corrected = apply_bias(log_probs, bias)
    assert accuracy(predictions(corrected[0]), labels) == 1.0
    assert cross_entropy(corrected, labels)[0] < cross_entropy(log_probs, labels)[0] - 1.0


def test_compute_losses_with_bias_is_per_candidate() -> None:
    rng = np.random.default_rng(1)
    log_probs = normalise(rng.normal(size=(4, 10, 2)))
    labels = rng.integers(0, 2, size=10)
    plain = compute_losses("ce", log_probs, labels)
    fitted = compute_losses("ce", log_probs, labels, with_bias=True)
    assert plain.bias is None and fitted.bias.shape == (4, 2)
    assert (fitted.losses <= plain.losses + 1e-9).all()
    with pytest.raises(KeyError, match="known: ce, hinge, error"):
        compute_losses("mse", log_probs, labels)


def test_calibrate_centres_each_choice() -> None:
    log_probs = normalise(np.array([[2.0, 0.0], [3.0, 0.5], [1.0, 0.2]]))
    calibrated = calibrate(log_probs)
    assert predictions(log_probs).tolist() == [0, 0, 0]
    assert 1 in predictions(calibrated).tolist()  # the constant lean towards choice 0 is gone
    np.testing.assert_allclose(np.exp(calibrated).sum(axis=-1), 1.0)


def test_metrics_match_hand_counts() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    assert accuracy(predicted, labels) == pytest.approx(4 / 6)
    matrix = confusion_matrix(predicted, labels, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # per-class F1: 0.5, 0.8, 0.6667
    assert macro_f1(predicted, labels, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_prior_correction_moves_decisions_towards_the_users_class_mix() -> None:
    from cbpt.common.losses import apply_prior

    balanced = np.log(np.array([[0.45, 0.55], [0.6, 0.4], [0.52, 0.48]]))
    corrected = apply_prior(balanced, np.array([0.8, 0.2]))
    assert predictions(balanced).tolist() == [1, 0, 0]
    assert predictions(corrected).tolist() == [0, 0, 0]  # a rare class needs more evidence
    np.testing.assert_allclose(np.exp(corrected).sum(-1), 1.0)
    np.testing.assert_allclose(apply_prior(balanced, np.array([0.5, 0.5])), normalise(balanced))
