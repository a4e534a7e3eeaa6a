"""Runs you can watch and continue: history and best-so-far vector per generation, ``show``/``runs``,
``--resume --budget``, seeds that seed both samples, sweeps, and ``tune --json``."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from cbpt.client.cli import app
from cbpt.client.cli import progress as progress_module
from cbpt.client.files.artifacts import load_tuned
from tests.client.helpers import TaskFactory

runner = CliRunner()


def cbpt(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def _vector(folder: Path) -> np.ndarray:
    return load_file(folder / "vector.safetensors")["vector"]


def test_every_generation_leaves_history_and_a_usable_partial_vector(
    server: str, make_task: TaskFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    seen: list[tuple[int, bool, int]] = []
    update = progress_module.TuningProgress.update

    def look_at_the_folder(self, row) -> None:  # what another terminal would see now
        update(self, row)
        rows = (out / "history.jsonl").read_text().splitlines()
        card = json.loads((out / "task.json").read_text())
        seen.append((len(rows), card["partial"], load_tuned(out).vector.shape[0]))

    monkeypatch.setattr(progress_module.TuningProgress, "update", look_at_the_folder)
    result = cbpt("tune", make_task(), "--server", server, "--out", out, "--budget", 12, "--popsize", 4)
    assert result.exit_code == 0, result.output
    assert seen == [(1, True, 16), (2, True, 16), (3, True, 16)]
    assert json.loads((out / "task.json").read_text())["partial"] is False
    assert len((out / "history.jsonl").read_text().splitlines()) == 3


def test_a_killed_run_leaves_a_partial_vector_and_extends_to_a_larger_budget(
    server: str, make_task: TaskFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_path = make_task()
    common = ["--server", server, "--popsize", 4, "--seed", 2, "--fit-bias"]
    assert cbpt("tune", task_path, "--out", tmp_path / "whole", "--budget", 24, *common).exit_code == 0

    update = progress_module.TuningProgress.update

    def ctrl_c_after_generation_1(self, row) -> None:
        update(self, row)
        if row.generation == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(progress_module.TuningProgress, "update", ctrl_c_after_generation_1)
    out = tmp_path / "cut"
    assert cbpt("tune", task_path, "--out", out, "--budget", 16, *common).exit_code == 130
    monkeypatch.setattr(progress_module.TuningProgress, "update", update)
    card = json.loads((out / "task.json").read_text())
    assert card["partial"] is True and card["stop_reason"] == "interrupted" and card["calls_used"] == 8
    test_file = task_path.parent / "data" / "test.jsonl"
    evaluated = cbpt("evaluate", out, test_file, "--server", server, "--json")
    assert evaluated.exit_code == 0, evaluated.output  # the best-so-far vector is usable
    shown = json.loads(cbpt("show", out, "--json").output)
    assert shown["status"] == "interrupted" and shown["calls_used"] == 8 and len(shown["curve"]) == 2

    finished = cbpt("tune", task_path, "--out", out, "--budget", 16, *common, "--resume")
    assert finished.exit_code == 0, finished.output
    extended = cbpt("tune", task_path, "--out", out, "--budget", 24, *common, "--resume", "--json")
    assert extended.exit_code == 0, extended.output
    document = json.loads(extended.output)
    assert document["calls_used"] == 24 and document["budget"] == 24
    np.testing.assert_array_equal(_vector(out), _vector(tmp_path / "whole"))
    assert len((out / "history.jsonl").read_text().splitlines()) == 6
    assert json.loads(cbpt("show", out, "--json").output)["status"] == "finished"


def test_show_and_runs_read_the_folder_alone(server: str, make_task: TaskFactory, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    task_path = make_task()
    for name in ("a", "b"):
        args = ("tune", task_path, "--server", server, "--out", root / name, "--budget", 8, "--popsize", 4)
        assert cbpt(*args).exit_code == 0
    shown = cbpt("show", root / "a")
    assert shown.exit_code == 0, shown.output
    assert "finished" in shown.output and "8 of 8" in shown.output and "dev accuracy curve" in shown.output
    listed = json.loads(cbpt("runs", root, "--json").output)
    assert [Path(run["folder"]).name for run in listed["runs"]] == ["a", "b"]
    assert all(run["status"] == "finished" and run["calls_used"] == 8 for run in listed["runs"])
    assert set(listed["runs"][0]) >= {"dev_accuracy", "dev_macro_f1", "budget", "stop_reason", "updated_at"}
    assert listed["runs"][0]["stop_reason"] == "budget" and re.search(
        r"stop reason\s*│\s*budget\s", shown.output
    )
    text = cbpt("runs", root)
    assert text.exit_code == 0 and "finished" in text.output
    missing = cbpt("show", tmp_path / "nothing")
    assert (
        missing.exit_code == 2
        and missing.output.startswith("error: ")
        and "not a run folder" in missing.output
    )


def test_seed_seeds_the_shots_and_the_optimizer(server: str, make_task: TaskFactory, tmp_path: Path) -> None:
    task_path = make_task()  # the task file says seed: 0
    common = ["--server", server, "--budget", 8, "--popsize", 4]
    both = cbpt("tune", task_path, "--out", tmp_path / "both", "--seed", 3, *common, "--json")
    assert both.exit_code == 0, both.output
    document = json.loads(both.output)
    assert (document["shots_seed"], document["optimizer_seed"]) == (3, 3)
    card = json.loads((tmp_path / "both" / "task.json").read_text())
    assert card["task"]["seed"] == 3 and card["settings"]["seed"] == 3
    split = cbpt(
        "tune", task_path, "--out", tmp_path / "split", "--seed", 3, "--shots-seed", 1, *common, "--json"
    )
    assert (json.loads(split.output)["shots_seed"], json.loads(split.output)["optimizer_seed"]) == (1, 3)
    default = json.loads(cbpt("tune", task_path, "--out", tmp_path / "default", *common, "--json").output)
    assert (default["shots_seed"], default["optimizer_seed"]) == (0, 0)  # as before: the task's seed, 0


def test_a_sweep_reports_dev_mean_and_std(server: str, make_task: TaskFactory, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = ["tune", make_task(), "--server", server, "--out", out, "--budget", 8, "--popsize", 4]
    swept = cbpt(*args, "--seeds", "0,1,2", "--json")
    assert swept.exit_code == 0, swept.output
    document = json.loads(swept.output)
    accuracies = [run["dev_metrics"]["accuracy"] for run in document["runs"]]
    assert document["seeds"] == [0, 1, 2] and document["dev_accuracy"]["values"] == accuracies
    assert document["dev_accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert document["dev_accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    for seed in (0, 1, 2):
        card = json.loads((out / f"seed-{seed}" / "task.json").read_text())
        assert card["task"]["seed"] == seed and card["settings"]["seed"] == seed
    again = cbpt(*args, "--seeds", "0,1,2")
    assert again.exit_code == 1 and "add --resume" in again.output
    text = cbpt(*args, "--seeds", "0,1,2", "--resume")
    assert text.exit_code == 0 and "mean ± sample std" in text.output
    clash = cbpt(*args, "--seeds", "0,1", "--seed", 3)
    assert clash.exit_code == 2 and "--seeds sets every seed" in clash.output


def test_an_unexpected_error_still_prints_the_resume_command(
    server: str, make_task: TaskFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    update = progress_module.TuningProgress.update

    def bug_after_generation_0(self, row) -> None:
        update(self, row)
        raise RuntimeError("a bug")

    monkeypatch.setattr(progress_module.TuningProgress, "update", bug_after_generation_0)
    out = tmp_path / "run"
    result = cbpt("tune", make_task(), "--server", server, "--out", out, "--budget", 8, "--popsize", 4)
    assert isinstance(result.exception, RuntimeError)  # a bug keeps its traceback ...
    line = next(line for line in result.output.splitlines() if line.startswith("resume with: "))
    words = shlex.split(line.removeprefix("resume with: "))  # ... after the way to continue
    monkeypatch.setattr(progress_module.TuningProgress, "update", update)
    assert runner.invoke(app, words[1:]).exit_code == 0


def test_a_resume_the_checkpoint_refuses_prints_one_line_and_no_resume_hint(
    server: str, make_task: TaskFactory, tmp_path: Path
) -> None:
    args = ["tune", make_task(), "--server", server, "--out", tmp_path / "run", "--popsize", 4]
    assert cbpt(*args, "--budget", 8).exit_code == 0
    refused = cbpt(*args, "--budget", 4, "--resume")
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert refused.exit_code == 1 and len(lines) == 1, refused.output
    assert "already used 8 calls; --budget must be at least 8" in lines[0]
