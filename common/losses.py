"""Losses and metrics over log-probs, computed on the client so labels and losses never travel.

Shapes: ``log_probs`` is [n candidates, e examples, c choices] (an example with
fewer choices is padded with -inf), ``labels`` is [e] int indices; every loss
returns [n]. ``fit_bias`` fits a per-choice bias b (b[0] = 0) for each candidate
by a few Newton steps on the cross-entropy of ``log_probs + b``; the bias stays
with the result and is applied on the client at prediction, never sent.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cbpt.common.errors import TunerWarning

# Floor for a log-prob, so a choice the model rules out costs a large but finite loss.
_LOGP_FLOOR = -1e4


def normalise(scores: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis, leaving -inf pads at -inf."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    top = np.max(np.where(finite, scores, -np.inf), axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    shifted = np.where(finite, scores - top, -np.inf)
    with np.errstate(divide="ignore"):
        total = np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return np.where(finite, shifted - total, -np.inf)


def apply_bias(log_probs: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``log_probs`` with a per-choice bias ([c], or [n, c] for one per candidate) added, renormalised."""
    if bias is None:
        return normalise(log_probs)
    bias = np.asarray(bias, dtype=np.float64)
    if bias.ndim == 2:
        bias = bias[:, None, :]
    return normalise(np.asarray(log_probs, dtype=np.float64) + bias[..., : np.shape(log_probs)[-1]])


def _label_log_probs(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    picked = np.take_along_axis(log_probs, labels[None, :, None], axis=2)[..., 0]
    return np.maximum(picked, _LOGP_FLOOR)


def cross_entropy(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean negative log-likelihood of the labels: [n]."""
    return -_label_log_probs(normalise(log_probs), np.asarray(labels)).mean(axis=1)


def hinge(log_probs: np.ndarray, labels: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """Mean max(0, margin - (logp[label] - best other logp)): [n]."""
    labels = np.asarray(labels)
    log_probs = normalise(log_probs)
    correct = _label_log_probs(log_probs, labels)
    others = log_probs.copy()
    np.put_along_axis(others, labels[None, :, None], -np.inf, axis=2)
    best_other = np.max(others, axis=2)
    gap = np.where(np.isfinite(best_other), correct - np.maximum(best_other, _LOGP_FLOOR), np.inf)
    return np.maximum(0.0, margin - gap).mean(axis=1)


def predictions(log_probs: np.ndarray) -> np.ndarray:
    """The best choice per example: [..., e]."""
    return np.argmax(np.where(np.isfinite(log_probs), log_probs, -np.inf), axis=-1)


def error_rate(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1 - accuracy: [n]."""
    return 1.0 - (predictions(log_probs) == np.asarray(labels)[None, :]).mean(axis=1)


LossFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]
LOSSES: dict[str, LossFunction] = {"ce": cross_entropy, "hinge": hinge, "error": error_rate}


def fit_bias(
    log_probs: np.ndarray, labels: np.ndarray, *, steps: int = 8, l2: float = 1e-2, max_step: float = 4.0
) -> np.ndarray:
    """Per-candidate choice bias [n, c] (b[:, 0] = 0) minimising CE(log_probs + b) + l2/2 |b|^2.

    Damped Newton steps on a strictly convex problem: a handful reach the minimum.
    The L2 term keeps b finite when a choice never wins or never is the label.
    """
    log_probs = np.asarray(log_probs, dtype=np.float64)
    count, examples, width = log_probs.shape
    labels = np.asarray(labels)
    targets = np.zeros((examples, width))
    targets[np.arange(examples), labels] = 1.0
    bias = np.zeros((count, width))
    if width < 2 or examples == 0:
        return bias
    eye = np.eye(width - 1)
    for _ in range(steps):
        probs = np.exp(normalise(log_probs + bias[:, None, :]))  # pads -> 0
        gradient = (probs - targets[None]).mean(axis=1) + l2 * bias
        hessian = np.einsum("nec,cd->necd", probs, np.eye(width)) - np.einsum("nec,ned->necd", probs, probs)
        hessian = hessian.mean(axis=1)[:, 1:, 1:] + l2 * eye
        step = np.linalg.solve(hessian, -gradient[:, 1:, None])[..., 0]
        bias[:, 1:] += np.clip(step, -max_step, max_step)
    return bias


@dataclass(frozen=True)
class LossResult:
    losses: np.ndarray  # [n]
    bias: np.ndarray | None  # [n, c] when fitted
    log_probs: np.ndarray  # [n, e, c], bias applied and renormalised


def compute_losses(
    name: str, log_probs: np.ndarray, labels: np.ndarray, *, with_bias: bool = False
) -> LossResult:
    """The named loss of every candidate, optionally after fitting each candidate's choice bias."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    bias = fit_bias(log_probs, labels) if with_bias else None
    adjusted = apply_bias(log_probs, bias)
    return LossResult(losses=LOSSES[name](adjusted, labels), bias=bias, log_probs=adjusted)


def calibrate(log_probs: np.ndarray) -> np.ndarray:
    """Mean-centred calibration from unlabelled inputs: subtract each choice's mean log-prob over the
    examples.

    Works on [e, c] or [n, e, c]; pads stay -inf; the result is renormalised.
    """
    log_probs = np.asarray(log_probs, dtype=np.float64)
    finite = np.isfinite(log_probs)
    sums = np.where(finite, log_probs, 0.0).sum(axis=-2, keepdims=True)
    counts = finite.sum(axis=-2, keepdims=True)
    offset = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return normalise(log_probs - offset)


def apply_prior(log_probs: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    """Scores under a class prior [c]: log_probs + log(prior), renormalised (Bayes' rule for a model
    whose scores assume balanced classes, as a bias fitted on balanced shots does)."""
    if prior is None:
        return normalise(log_probs)
    prior = np.asarray(prior, dtype=np.float64)
    return normalise(np.asarray(log_probs, dtype=np.float64) + np.log(prior)[: np.shape(log_probs)[-1]])


# A loss the optimizer can digest when the model rules a label out entirely.
_LOSS_CEILING = 1e6


def clip_losses(losses: np.ndarray, generation: int) -> np.ndarray:
    """Losses every optimizer can rank: NaN and +inf become a large finite loss, with a TunerWarning.

    A clipped candidate is still told to the optimizer (as a very bad one), so the run goes on;
    the warning says it happened, since many clipped candidates mean the loss is not measuring much.
    """
    clipped = int(np.count_nonzero(~np.isfinite(losses)))
    if clipped:
        warnings.warn(
            f"generation {generation}: clipped the non-finite losses of {clipped} of {len(losses)} "
            f"candidates (NaN and +inf to {_LOSS_CEILING:g}, -inf to the lowest float)",
            TunerWarning,
            stacklevel=3,
        )
    return np.nan_to_num(losses, nan=_LOSS_CEILING, posinf=_LOSS_CEILING)


# -- metrics ---------------------------------------------------------------------------------------
def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predicted) == np.asarray(labels))) if len(labels) else 0.0


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predicted)), 1)
    return matrix


def macro_f1(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Unweighted mean F1 over the classes present in the labels or the predictions (as scikit-learn)."""
    matrix = confusion_matrix(predicted, labels, num_classes)
    true_positive = np.diag(matrix).astype(np.float64)
    predicted_count = matrix.sum(axis=0)
    actual_count = matrix.sum(axis=1)
    present = (predicted_count + actual_count) > 0
    if not present.any():
        return 0.0
    denominator = predicted_count + actual_count
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return float(f1[present].mean())


def metrics(log_probs: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> dict[str, object]:
    """Accuracy, macro-F1 and the confusion matrix of one candidate's log-probs [e, c]."""
    predicted = predictions(log_probs)
    num_classes = num_classes or int(np.shape(log_probs)[-1])
    return {
        "accuracy": accuracy(predicted, labels),
        "macro_f1": macro_f1(predicted, labels, num_classes),
        "confusion_matrix": confusion_matrix(predicted, labels, num_classes).tolist(),
        "num_examples": len(labels),
    }
