"""Tell callbacks and stop reasons: what a registered callback sees, in which order, and the stop words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cbpt.client.errors import ArtifactError, ClientError, ConfigError
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.checkpoint import load_checkpoint
from cbpt.client.tuning.results import HistoryRow, StopReason
from cbpt.client.tuning.runs import CARD_FILE, RunSummary
from cbpt.client.tuning.tuner import Tuner
from cbpt.common.tasks.task import Task
from tests.client.helpers import TaskFactory


def test_the_stop_reasons_keep_the_words_files_and_scripts_read() -> None:
    assert {reason.name: reason.value for reason in StopReason} == {
        "BUDGET": "budget",
        "PATIENCE": "patience",
        "NO_VECTOR": "no-vector",
        "RUNNING": "running",
        "INTERRUPTED": "interrupted",
    }
    assert f"{StopReason.NO_VECTOR}" == str(StopReason.NO_VECTOR) == "no-vector"
    assert json.dumps({"stop_reason": StopReason.PATIENCE}) == '{"stop_reason": "patience"}'
    assert StopReason.parse("budget", "stop_reason") is StopReason.BUDGET
    with pytest.raises(ValueError, match="stop_reason: unknown stop reason 'done'; known: budget, patience"):
        StopReason.parse("done", "stop_reason")


def test_registered_callbacks_see_the_row_recorded_the_stop_decided_and_the_checkpoint_written(
    client: TuningClient, make_task: TaskFactory, tmp_path: Path
) -> None:
    task = Task.from_file(make_task(dev=1))  # dev accuracy takes 3 values, so patience 1 stops early
    path = tmp_path / "run.cbpt"
    tuner = Tuner(client, task, budget=32, popsize=4, patience=1, checkpoint=path)
    calls: list[tuple[str, int]] = []

    def first(tuner: Tuner, row: HistoryRow) -> None:
        calls.append(("first", row.generation))
        assert tuner.state.history[-1] == row and len(tuner.state.history) == row.generation + 1
        saved = load_checkpoint(path).state
        assert len(saved.generations) == row.generation + 1 and saved.history[-1] == row
        assert saved.stop_reason == tuner.state.stop_reason  # the stop is decided before the checkpoint
        assert tuner.result_so_far().stop_reason == (tuner.stop() or StopReason.RUNNING)

    tuner.register_callback("tell", first)
    tuner.register_callback("tell", lambda tuner, row: calls.append(("second", row.generation)))
    result = tuner.run()
    generations = len(result.history)
    assert result.stop_reason is StopReason.PATIENCE and generations < 8
    assert calls == [(name, g) for g in range(generations) for name in ("first", "second")]
    assert load_checkpoint(path).state.stop_reason is StopReason.PATIENCE


def test_a_dimension_0_run_calls_back_once_and_writes_no_checkpoint(
    client: TuningClient, make_task: TaskFactory, tmp_path: Path
) -> None:
    path = tmp_path / "run.cbpt"
    tuner = Tuner(client, Task.from_file(make_task()), adapter="none", budget=8, popsize=4, checkpoint=path)
    rows: list[HistoryRow] = []
    tuner.register_callback("tell", lambda tuner, row: rows.append(row))
    result = tuner.run()
    assert rows == list(result.history) and rows[0].calls_used == 1 and tuner.stop() is StopReason.NO_VECTOR
    assert not path.exists()


def test_callbacks_attach_to_tell_only_and_the_loop_belongs_to_a_run(client: TuningClient, make_task) -> None:
    tuner = Tuner(client, Task.from_file(make_task()), budget=4, popsize=4)
    with pytest.raises(ConfigError, match="unknown callback event 'ask'; known: tell"):
        tuner.register_callback("ask", lambda tuner, row: None)  # type: ignore[arg-type]
    with pytest.raises(ClientError, match="no run has started"):
        tuner.stop()
    with pytest.raises(ClientError, match="belong to a run in progress"):
        tuner.ask()


def test_a_run_folder_naming_an_unknown_stop_reason_is_refused_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / CARD_FILE).write_text(json.dumps({"partial": False, "stop_reason": "bored"}))
    with pytest.raises(ArtifactError, match="stop_reason: unknown stop reason 'bored'"):
        RunSummary.read(tmp_path)
    (tmp_path / CARD_FILE).write_text(json.dumps({"partial": True, "stop_reason": "interrupted"}))
    summary = RunSummary.read(tmp_path)
    assert summary.status == "interrupted" and summary.stop_reason is StopReason.INTERRUPTED
