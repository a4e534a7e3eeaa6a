"""Tuner.result_so_far: the best-on-dev selection at any generation, as run() would return it then."""

from __future__ import annotations

import numpy as np
import pytest

from cbpt.client.errors import ClientError
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.results import HistoryRow, TuningResult
from cbpt.client.tuning.tuner import Tuner
from cbpt.common.losses import accuracy, apply_bias, predictions
from cbpt.common.tasks.task import Task
from tests.client.helpers import TaskFactory


@pytest.fixture
def task(make_task: TaskFactory) -> Task:
    return Task.from_file(make_task())  # 8 train and 4 dev examples, 2 classes


@pytest.mark.parametrize("fit_bias", [False, True])
def test_result_so_far_tracks_the_best_on_dev_and_ends_as_run(
    client: TuningClient, task: Task, fit_bias: bool
) -> None:
    seen: list[tuple[HistoryRow, TuningResult]] = []
    tuner = Tuner(client, task, budget=16, popsize=4, seed=1, fit_bias=fit_bias)
    with pytest.raises(ClientError, match="no generation"):
        tuner.result_so_far()
    tuner.register_callback("tell", lambda tuner, row: seen.append((row, tuner.result_so_far())))
    final = tuner.run()

    assert [row.calls_used for row, _ in seen] == [4, 8, 12, 16]
    for index, (row, partial) in enumerate(seen):
        assert partial.calls_used == row.calls_used and partial.history[-1] == row
        assert partial.dev_accuracy == max(r.dev_accuracy for r, _ in seen[: index + 1])
        assert partial.stop_reason == ("budget" if index == 3 else "running")
        assert (partial.bias is not None) == fit_bias and partial.vector.shape == (16,)
    last = seen[-1][1]
    assert np.array_equal(last.vector, final.vector) and last.dev_metrics == final.dev_metrics
    assert last.history == final.history and last.train_loss == final.train_loss
    assert (last.bias is None and final.bias is None) or np.array_equal(last.bias, final.bias)
    # After the run it still answers with the run's result.
    assert np.array_equal(tuner.result_so_far().vector, final.vector)
    # An earlier selection is a usable result: its vector and bias give its recorded dev accuracy.
    first = seen[0][1]
    dev = task.dev
    log_probs = client.predict("bbt", first.vector, dev.texts, dev.wire_choices, cue=dev.cue)
    assert accuracy(predictions(apply_bias(log_probs, first.bias)), dev.labels) == first.dev_accuracy


def test_result_so_far_without_a_vector(client: TuningClient, task: Task) -> None:
    partial: list[TuningResult] = []
    tuner = Tuner(client, task, adapter="none", budget=4, popsize=4, fit_bias=True)
    tuner.register_callback("tell", lambda tuner, row: partial.append(tuner.result_so_far()))
    final = tuner.run()
    assert len(partial) == 1 and partial[0].stop_reason == final.stop_reason == "no-vector"
    assert partial[0].vector.shape == (0,) and np.array_equal(partial[0].bias, final.bias)
