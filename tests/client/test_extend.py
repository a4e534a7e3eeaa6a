"""Continuing a finished run to a larger budget: the recorded calls replay, the rest is deterministic."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cbpt.client.errors import CheckpointError
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.checkpoint import load_checkpoint
from cbpt.client.tuning.results import HistoryRow
from cbpt.client.tuning.tuner import Tuner
from cbpt.common.tasks.task import Task
from tests.client.helpers import TaskFactory

TIMING = ("wall_seconds", "elapsed_seconds")
SETTINGS = {"popsize": 4, "seed": 3, "fit_bias": True}


@pytest.fixture
def task(make_task: TaskFactory) -> Task:
    return Task.from_file(make_task())


def _untimed(history: tuple[HistoryRow, ...]) -> list[dict]:
    return [{k: v for k, v in row.to_json().items() if k not in TIMING} for row in history]


def test_a_finished_cma_run_extends_to_exactly_the_longer_run(
    server: str, task: Task, tmp_path: Path
) -> None:
    with TuningClient(server) as client:
        longer = Tuner(client, task, budget=16, **SETTINGS).run()
        path = tmp_path / "run.cbpt"
        short = Tuner(client, task, budget=8, checkpoint=path, **SETTINGS).run()
        assert short.calls_used == 8 and short.stop_reason == "budget"
        calls_before = client.stats.calls
        extended = Tuner(client, task, budget=16, checkpoint=path, **SETTINGS).run(resume=True)
        assert client.stats.calls - calls_before == 2 + 2 + 2  # pre-flight, then generations 2 and 3
    np.testing.assert_array_equal(extended.vector, longer.vector)
    assert _untimed(extended.history) == _untimed(longer.history) and extended.calls_used == 16
    assert extended.settings["budget"] == 16
    saved = load_checkpoint(path).config
    assert saved["budget"] == 16 and saved["optimizer_budget"] == 8  # the optimizer keeps its first plan


def test_a_nevergrad_run_extends_deterministically(server: str, task: Task, tmp_path: Path) -> None:
    """nevergrad plans by budget (NGOpt picks its algorithm from it), so the first plan is kept."""
    settings = {**SETTINGS, "optimizer": "ng:NGOpt"}
    first = tmp_path / "first.cbpt"
    with TuningClient(server) as client:
        short = Tuner(client, task, budget=8, checkpoint=first, **settings).run()
        second = tmp_path / "second.cbpt"
        shutil.copy(first, second)
        one = Tuner(client, task, budget=16, checkpoint=first, **settings).run(resume=True)
        two = Tuner(client, task, budget=16, checkpoint=second, **settings).run(resume=True)
    assert _untimed(one.history)[:2] == _untimed(short.history)  # the first calls replay exactly
    np.testing.assert_array_equal(one.vector, two.vector)
    assert _untimed(one.history) == _untimed(two.history) and one.calls_used == 16


def test_a_budget_below_the_calls_used_is_refused(client: TuningClient, task: Task, tmp_path: Path) -> None:
    path = tmp_path / "run.cbpt"
    Tuner(client, task, budget=12, checkpoint=path, **SETTINGS).run()
    with pytest.raises(CheckpointError, match="already used 12 calls; --budget must be at least 12"):
        Tuner(client, task, budget=8, checkpoint=path, **SETTINGS).run(resume=True)
