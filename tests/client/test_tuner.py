"""The tuning loop end to end through a real loopback server on a tiny model."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest

from cbpt.client.errors import CheckpointError, ConfigError, FingerprintMismatch, TunerWarning
from cbpt.client.files.artifacts import load_tuned, save_tuned
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.checkpoint import load_checkpoint
from cbpt.client.tuning.results import HistoryRow, TuningResult
from cbpt.client.tuning.tuner import Tuner, clip_losses
from cbpt.common.errors import CbptWarning
from cbpt.common.losses import LOSSES, accuracy, apply_bias, compute_losses, cross_entropy, predictions
from cbpt.common.tasks.task import Task
from tests.client.helpers import TaskFactory, write_jsonl

TIMING = ("wall_seconds", "elapsed_seconds")


class Interrupted(Exception):
    """Stands in for a crash or Ctrl-C between generations."""


@pytest.fixture
def task(make_task: TaskFactory) -> Task:
    return Task.from_file(make_task())  # 8 train and 4 dev examples, 2 classes


def _untimed(history: tuple[HistoryRow, ...]) -> list[dict]:
    return [{k: v for k, v in row.to_json().items() if k not in TIMING} for row in history]


@pytest.mark.parametrize("optimizer", ["cma", "ng:OnePlusOne", "ng:DiagonalCMA"])
def test_tuning_end_to_end(client: TuningClient, task: Task, optimizer: str) -> None:
    seen: list[HistoryRow] = []
    tuner = Tuner(client, task, optimizer=optimizer, budget=16, popsize=4, seed=0)
    tuner.register_callback("tell", lambda tuner, row: seen.append(row))
    result = tuner.run()
    assert [row.generation for row in result.history] == [0, 1, 2, 3] and list(result.history) == seen
    assert [row.calls_used for row in result.history] == [4, 8, 12, 16] and result.calls_used == 16
    assert result.vector.shape == (16,) and result.vector.dtype == np.float32 and result.bias is None
    assert result.model_fingerprint == client.info().model_fingerprint and result.stop_reason == "budget"
    # Info, the pre-flight token counts of train and dev, then one request per generation for the
    # whole population, plus one dev request per generation.
    assert client.stats.calls == 1 + 2 + 4 + 4 and client.stats.candidate_evaluations == 16 + 4
    best_dev = max(row.dev_accuracy for row in result.history)
    assert result.dev_accuracy == best_dev
    rescored = client.predict("bbt", result.vector, task.dev.texts, task.dev.choices, cue=task.dev.cue)
    assert accuracy(predictions(rescored), task.dev.labels) == result.dev_accuracy


@pytest.mark.parametrize("optimizer", ["cma", "ng:NGOpt"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(
    server: str, task: Task, tmp_path: Path, optimizer: str
) -> None:
    settings = {"optimizer": optimizer, "budget": 20, "popsize": 4, "seed": 3, "fit_bias": True}
    with TuningClient(server) as client:
        whole = Tuner(client, task, checkpoint=tmp_path / "whole.cbpt", **settings).run()

    def crash_after_generation_2(tuner: Tuner, row: HistoryRow) -> None:
        if row.generation == 2:
            raise Interrupted

    path = tmp_path / "crashed.cbpt"
    with TuningClient(server) as client, pytest.raises(Interrupted):
        crashing = Tuner(client, task, checkpoint=path, **settings)
        crashing.register_callback("tell", crash_after_generation_2)
        crashing.run()
    with TuningClient(server) as client:
        resumed = Tuner(client, task, checkpoint=path, **settings).run(resume=True)
        assert client.stats.calls == 1 + 2 + 2 + 2  # pre-flight, then only generations 3 and 4
    np.testing.assert_array_equal(resumed.vector, whole.vector)
    np.testing.assert_array_equal(resumed.bias, whole.bias)
    assert _untimed(resumed.history) == _untimed(whole.history)
    assert resumed.dev_metrics == whole.dev_metrics and resumed.calls_used == whole.calls_used == 20


def _crashed_checkpoint(client: TuningClient, task: Task, path: Path, **settings) -> None:
    def crash(tuner: Tuner, row: HistoryRow) -> None:
        raise Interrupted

    tuner = Tuner(client, task, checkpoint=path, **settings)
    tuner.register_callback("tell", crash)
    with pytest.raises(Interrupted):
        tuner.run()


def test_resume_refuses_other_settings_and_tampering(
    client: TuningClient, task: Task, tmp_path: Path
) -> None:
    path = tmp_path / "run.cbpt"
    settings = {"budget": 12, "popsize": 4, "seed": 0, "checkpoint_key": "secret"}
    _crashed_checkpoint(client, task, path, **settings)
    with pytest.raises(CheckpointError, match="already exists"):
        Tuner(client, task, checkpoint=path, **settings).run()
    with pytest.raises(CheckpointError, match="another seed"):
        Tuner(client, task, checkpoint=path, **{**settings, "seed": 1}).run(resume=True)
    with pytest.raises(CheckpointError, match="another popsize"):
        Tuner(client, task, checkpoint=path, **{**settings, "popsize": 3}).run(resume=True)
    with pytest.raises(CheckpointError, match="another task"):
        other = Task.from_dict({**task.model_dump(), "seed": 9})
        Tuner(client, other, checkpoint=path, **settings).run(resume=True)
    with pytest.raises(CheckpointError, match="wrong key"):
        Tuner(client, task, checkpoint=path, **{**settings, "checkpoint_key": "guess"}).run(resume=True)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="failed authentication"):
        Tuner(client, task, checkpoint=path, **settings).run(resume=True)


def test_zero_dimension_adapter_skips_the_loop(client: TuningClient, task: Task) -> None:
    result = Tuner(client, task, adapter="none", budget=40, popsize=4, fit_bias=True).run()
    assert result.vector.shape == (0,) and result.bias.shape == (2,) and result.bias[0] == 0.0
    assert result.calls_used == 1 and len(result.history) == 1 and result.stop_reason == "no-vector"
    assert result.dev_metrics["num_examples"] == 4


def test_patience_stops_early(client: TuningClient, make_task: TaskFactory) -> None:
    task = Task.from_file(make_task(dev=1))  # dev accuracy takes 3 values, so it cannot rise 4 times
    result = Tuner(client, task, budget=32, popsize=4, patience=1).run()
    assert result.stop_reason == "patience" and len(result.history) <= 4 < 8


def test_select_on_dev_loss_keeps_the_lowest_dev_cross_entropy(client: TuningClient, task: Task) -> None:
    chosen: list[float] = []
    tuner = Tuner(client, task, budget=24, popsize=4, seed=1, fit_bias=True, select_on="loss")
    tuner.register_callback(
        "tell", lambda tuner, row: chosen.append(tuner.result_so_far().dev_metrics["loss"])
    )
    result = tuner.run()
    assert len(chosen) == 6 and all(later <= earlier for earlier, later in itertools.pairwise(chosen))
    assert result.dev_metrics["loss"] == chosen[-1] and result.settings["select_on"] == "loss"
    dev = client.predict("bbt", result.vector, task.dev.texts, task.dev.choices, cue=task.dev.cue)
    assert abs(cross_entropy(apply_bias(dev, result.bias)[None], task.dev.labels)[0] - chosen[-1]) < 1e-5


def test_select_from_mean_offers_the_cma_mean_with_its_own_bias(client: TuningClient, task: Task) -> None:
    offered: list[np.ndarray] = []
    tuner = Tuner(client, task, budget=16, popsize=4, seed=2, fit_bias=True, select_from="mean")
    tuner.register_callback("tell", lambda tuner, row: offered.append(tuner.result_so_far().vector))
    result = tuner.run()
    assert result.settings["select_from"] == "mean"
    np.testing.assert_array_equal(offered[0], np.zeros(16))  # the first mean is the start point
    train = task.train
    log_probs = client.evaluate("bbt", result.vector[None], train.texts, train.choices, cue=train.cue)
    scored = compute_losses("ce", log_probs, train.labels, with_bias=True)
    assert abs(scored.losses[0] - result.train_loss) < 1e-5
    np.testing.assert_allclose(scored.bias[0], result.bias, atol=1e-5)
    with pytest.raises(ConfigError, match="needs the 'cma' optimizer"):
        Tuner(client, task, optimizer="ng:NGOpt", budget=4, popsize=4, select_from="mean").run()


def test_settings_are_checked(client: TuningClient, task: Task) -> None:
    with pytest.raises(ConfigError, match="below one generation"):
        Tuner(client, task, budget=3, popsize=4)
    with pytest.raises(ConfigError, match="unknown loss"):
        Tuner(client, task, loss="mse")
    with pytest.raises(ConfigError, match="unknown select_on"):
        Tuner(client, task, select_on="f1")
    with pytest.raises(ConfigError, match="unknown select_from"):
        Tuner(client, task, select_from="median")
    with pytest.raises(ConfigError, match="unknown adapter 'nope'"):
        Tuner(client, task, adapter="nope", budget=4, popsize=4).run()


def test_tuned_folder_predicts_with_its_bias_and_checks_the_model(
    client: TuningClient, task: Task, tmp_path: Path, other_model_server: str
) -> None:
    result: TuningResult = Tuner(client, task, budget=8, popsize=4, fit_bias=True).run()
    save_tuned(tmp_path / "tuned", result, task.format_only())
    tuned = load_tuned(tmp_path / "tuned")
    log_probs = tuned.log_probs(client, task.dev)
    assert accuracy(predictions(log_probs), task.dev.labels) == result.dev_accuracy
    with (
        TuningClient(other_model_server) as other,
        pytest.raises(FingerprintMismatch, match="tuned on model"),
    ):
        tuned.log_probs(other, task.dev)


def test_multiple_choice_full_choice_without_dev(client: TuningClient, tmp_path: Path) -> None:
    rows = []
    for i in range(12):
        options = ["red apple", "green leaf", "blue sky"][: 2 + i % 2]
        rows.append({"question": f"Which colour is item {i}?", "options": options, "answer": i % 2})
    write_jsonl(tmp_path / "mc.jsonl", rows)
    task = Task.from_dict(
        {
            "name": "colours",
            "data": {"train": str(tmp_path / "mc.jsonl")},
            "template": "Q: {question}\nA:",
            "options_field": "options",
            "label_field": "answer",
            "mode": "full_choice",
            "shots_per_class": 3,
            "dev_per_class": 0,
        }
    )
    result = Tuner(client, task, budget=8, popsize=4, fit_bias=True, loss="hinge").run()
    assert result.dev_metrics is None and result.bias.shape == (3,)
    assert result.train_loss == min(row.best_loss for row in result.history)  # no dev: lowest train loss
    assert all(row.dev_accuracy is None for row in result.history)


def _with_non_finite_losses(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy, except that candidate 1 scores NaN and candidate 2 +inf (a broken custom loss)."""
    losses = cross_entropy(log_probs, labels)
    losses[1], losses[2] = np.nan, np.inf
    return losses


def test_clipped_losses_are_told_and_warned_about(
    client: TuningClient, task: Task, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(LOSSES, "ce-with-holes", _with_non_finite_losses)  # a loss is one entry in LOSSES
    path = tmp_path / "run.cbpt"
    tuner = Tuner(client, task, budget=8, popsize=4, seed=0, loss="ce-with-holes", checkpoint=path)
    with pytest.warns(TunerWarning) as caught:
        result = tuner.run()
    messages = [str(warning.message) for warning in caught if issubclass(warning.category, TunerWarning)]
    assert messages == [
        f"generation {g}: clipped the non-finite losses of 2 of 4 candidates "
        "(NaN and +inf to 1e+06, -inf to the lowest float)"
        for g in (0, 1)
    ]
    assert issubclass(TunerWarning, CbptWarning)
    told = [generation.losses for generation in load_checkpoint(path).state.generations]
    assert all(losses[1] == losses[2] == 1e6 and np.isfinite(losses).all() for losses in told)
    assert np.isfinite(result.train_loss) and result.train_loss < 1e6


def test_finite_losses_pass_unchanged_and_silently() -> None:
    losses = np.array([0.5, 0.25, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert clip_losses(losses, 3) is not losses and np.array_equal(clip_losses(losses, 3), losses)
    with pytest.warns(TunerWarning, match="generation 7: clipped the non-finite losses of 1 of 3"):
        clipped = clip_losses(np.array([0.5, -np.inf, 2.0]), 7)
    assert clipped[1] == np.finfo(np.float64).min
