"""The ``cbpt`` CLI against real loopback servers: the happy path, Ctrl-C + resume, and one-line errors."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer
from safetensors.numpy import load_file
from typer.testing import CliRunner

from cbpt.client.cli import app
from cbpt.client.cli import progress as progress_module
from cbpt.client.cli.connection import Connection
from cbpt.client.cli.keys import KeySource
from cbpt.client.cli.tune_session import RunRequest, resume_command
from cbpt.client.tuning.settings import TunerSettings
from cbpt.common.net import free_port
from cbpt.common.tasks.task import Task
from tests.client.helpers import LABELS, TaskFactory, labelled_rows, write_jsonl

runner = CliRunner()


def cbpt(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def assert_one_line_error(result, code: int, fragment: str) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output and lines[0].startswith("error: ")
    assert fragment in lines[0], lines[0]
    return lines[0]


def test_info(server: str) -> None:
    result = cbpt("info", "--server", server)
    assert result.exit_code == 0, result.output
    assert "tiny-llama-0" in result.output and "bbt" in result.output and "max_candidates" in result.output
    assert "placement" in result.output and "prefix" in result.output


def test_tune_evaluate_predict(server: str, make_task: TaskFactory, tmp_path: Path) -> None:
    task_path = make_task()
    out = tmp_path / "tuned"
    tuned = cbpt(
        "tune", task_path, "--server", server, "--out", out, "--budget", 8, "--popsize", 4, "--fit-bias"
    )
    assert tuned.exit_code == 0, tuned.output
    assert "dev accuracy" in tuned.output and "8 of 8" in tuned.output
    assert re.search(r"stopped by\s*│\s*budget\s", tuned.output)  # the StopReason's word, not its name
    for name in ("vector.safetensors", "task.json", "history.jsonl", "curve.png", "checkpoint.cbpt"):
        assert (out / name).is_file(), name
    test_file = task_path.parent / "data" / "test.jsonl"

    evaluated = cbpt("evaluate", out, test_file, "--server", server)
    assert evaluated.exit_code == 0, evaluated.output
    assert (
        "accuracy" in evaluated.output
        and "macro-F1" in evaluated.output
        and "LABEL_SECRET_A" in evaluated.output
    )
    as_json = json.loads(cbpt("evaluate", out, test_file, "--server", server, "--json").output)
    assert as_json["num_examples"] == 8 and len(as_json["confusion_matrix"]) == 2

    zero_shot = cbpt(
        "evaluate", "--zero-shot", "--task", task_path, "--server", server, "--calibrate", "--json"
    )
    assert zero_shot.exit_code == 0, zero_shot.output
    assert json.loads(zero_shot.output)["num_examples"] == 8  # defaults to the task's test file

    unlabelled = write_jsonl(tmp_path / "new.jsonl", [{"text": "what a film"}, {"text": "so dull"}])
    preds = tmp_path / "preds.jsonl"
    predicted = cbpt("predict", out, unlabelled, "--server", server, "--out", preds)
    assert predicted.exit_code == 0, predicted.output
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(records) == 2 and all(record["prediction"] in LABELS for record in records)
    assert all(abs(sum(record["probabilities"].values()) - 1) < 1e-4 for record in records)


def test_ctrl_c_keeps_the_checkpoint_and_prints_the_resume_command(
    server: str, make_task: TaskFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_path = make_task()
    common = ["--server", server, "--budget", 16, "--popsize", 4, "--seed", 5, "--select-from", "mean"]
    whole = cbpt("tune", task_path, "--out", tmp_path / "whole", *common)
    assert whole.exit_code == 0, whole.output

    update = progress_module.TuningProgress.update

    def press_ctrl_c_after_generation_1(self, row) -> None:
        update(self, row)
        if row.generation == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(progress_module.TuningProgress, "update", press_ctrl_c_after_generation_1)
    interrupted = cbpt("tune", task_path, "--out", tmp_path / "cut", *common)
    assert interrupted.exit_code == 130 and "Traceback" not in interrupted.output
    command = next(line for line in interrupted.output.splitlines() if line.startswith("resume with: "))
    words = shlex.split(command.removeprefix("resume with: "))
    assert words[:2] == ["cbpt", "tune"] and words[-1] == "--resume" and "--select-from" in words
    monkeypatch.setattr(progress_module.TuningProgress, "update", update)
    resumed = runner.invoke(app, words[1:])
    assert resumed.exit_code == 0, resumed.output
    whole_vector = load_file(tmp_path / "whole" / "vector.safetensors")["vector"]
    resumed_vector = load_file(tmp_path / "cut" / "vector.safetensors")["vector"]
    assert (whole_vector == resumed_vector).all()


def test_unreachable_server() -> None:
    result = cbpt("info", "--server", f"127.0.0.1:{free_port()}", "--retries", 0)
    assert_one_line_error(result, 1, "unavailable")


def test_bad_api_key(auth_server: tuple[str, str, str]) -> None:
    target, _, _ = auth_server
    assert_one_line_error(
        cbpt("info", "--server", target, "--api-key", "cbpt_wrong"), 1, "refused the API key"
    )
    assert cbpt("info", "--server", target, "--api-key", auth_server[1]).exit_code == 0


def test_task_file_errors(server: str, make_task: TaskFactory, tmp_path: Path) -> None:
    def tune(task_path: Path):
        return cbpt(
            "tune", task_path, "--server", server, "--out", tmp_path / "never", "--budget", 4, "--popsize", 4
        )

    broken = make_task()
    broken.write_text("name: [unclosed\n")
    assert_one_line_error(tune(broken), 2, "not valid YAML")
    assert_one_line_error(tune(tmp_path / "absent.yaml"), 2, "task file not found")
    assert_one_line_error(tune(make_task(template="Review: {review}")), 2, "missing field 'review'")
    rows = [*labelled_rows(12), {"text": "meh", "label": "LABEL_SECRET_C"}]
    assert_one_line_error(tune(make_task(rows=rows)), 2, "unknown label 'LABEL_SECRET_C'")
    assert_one_line_error(tune(make_task(choices={"LABEL_SECRET_A": " positive"})), 2, "unknown label")
    assert_one_line_error(tune(make_task(shots=30)), 2, "needs 32")


def test_server_rejection_and_fingerprint_mismatch(
    server: str, limited_server: str, other_model_server: str, make_task: TaskFactory, tmp_path: Path
) -> None:
    task_path = make_task()
    long_text = write_jsonl(tmp_path / "long.jsonl", [{"text": "very " * 40, "label": "LABEL_SECRET_A"}])
    result = cbpt("evaluate", "--zero-shot", "--task", task_path, long_text, "--server", limited_server)
    # Refused by the pre-flight check, before scoring, as input to fix (it was the server's texts[0]).
    assert_one_line_error(result, 2, "long.jsonl row 1: 208 characters exceed the server's limit of 120")

    out = tmp_path / "tuned"
    assert (
        cbpt("tune", task_path, "--server", server, "--out", out, "--budget", 4, "--popsize", 4).exit_code
        == 0
    )
    test_file = task_path.parent / "data" / "test.jsonl"
    mismatch = cbpt("evaluate", out, test_file, "--server", other_model_server)
    assert_one_line_error(mismatch, 1, "tuned on model")
    again = cbpt("tune", task_path, "--server", server, "--out", out, "--budget", 4, "--popsize", 4)
    assert_one_line_error(again, 1, "add --resume")


# -- options declared once -------------------------------------------------------------------------
CONNECTION_OPTIONS = (
    "--server",
    "--api-key",
    "--ca-cert",
    "--client-cert",
    "--client-key",
    "--insecure",
    "--timeout",
    "--retries",
    "--retry-window",
)
CLI_SOURCE = Path(__file__).resolve().parents[2] / "client" / "cli"


def _tune_command():
    return typer.main.get_command(app).commands["tune"]  # type: ignore[attr-defined]


def _options(command: str) -> dict:
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    return {
        name: param
        for param in commands[command].params
        if param.param_type_name == "option"
        for name in param.opts
    }


def test_every_server_command_takes_the_same_connection_options() -> None:
    reference = _options("tune")
    for command, (timeout, retries) in {
        "info": (30.0, 2),
        "tune": (300.0, 4),
        "evaluate": (300.0, 4),
        "predict": (300.0, 4),
    }.items():
        options = _options(command)
        assert set(CONNECTION_OPTIONS) <= set(options), command
        for name in CONNECTION_OPTIONS:
            assert (
                options[name].help == reference[name].help and options[name].envvar == reference[name].envvar
            )
        # Options not given are None, so the command's own defaults apply: shown, and used by its build.
        shown = (options["--timeout"].show_default, options["--retries"].show_default)
        assert shown == (str(timeout), str(retries)), command
        assert (
            options["--server"].show_default == "127.0.0.1:50051"
            and options["--api-key"].envvar == "CBPT_API_KEY"
        )


def test_the_cli_source_declares_each_option_once() -> None:
    """Each shared option is one field of one model (its option generated from it): no command spells it."""
    from cbpt.common.cli import leaves

    sources = {path.name: path.read_text(encoding="utf-8") for path in CLI_SOURCE.glob("*.py")}
    for option in (*CONNECTION_OPTIONS, "--passphrase", "--key-file"):
        assert not [name for name, source in sources.items() if f'"{option}"' in source], option
    declared = [leaf.option for model in (Connection, KeySource) for leaf in leaves(model).values()]
    assert sorted(declared) == sorted({*CONNECTION_OPTIONS, "--passphrase", "--key-file"})


def test_options_may_come_before_or_after_the_arguments(make_task: TaskFactory, tmp_path: Path) -> None:
    task_path = make_task()
    missing = tmp_path / "missing-ca.pem"
    for words in (
        ["tune", task_path, "--out", tmp_path / "t", "--adapter", "bbt-cue", "--ca-cert", missing],
        ["tune", "--ca-cert", missing, task_path, "--adapter", "bbt-cue", "--out", tmp_path / "t"],
    ):
        assert_one_line_error(cbpt(*words), 1, f"cannot read root certificates {missing}")
    assert_one_line_error(cbpt("info", "--ca-cert", missing), 1, "cannot read root certificates")


def test_the_resume_command_reads_back_as_the_same_settings(tmp_path: Path) -> None:
    settings = TunerSettings(
        adapter="bbt-cue",
        optimizer="ng:NGOpt",
        budget=30,
        popsize=6,
        sigma0=0.25,
        loss="hinge",
        fit_bias=True,
        select_on="loss",
        dev_every=2,
        patience=4,
        seed=9,
    )
    connection = Connection(server="example.com:443", api_key="cbpt_secret", ca_cert=tmp_path / "ca.pem")
    keys = KeySource(passphrase="not echoed", key_file=tmp_path / "k.key")
    task = Task.from_dict(
        {"name": "t", "data": {"train": str(tmp_path / "train.jsonl")}, "template": "{text}:", "seed": 4,
         "choices": {"a": " a", "b": " b"}}
    )  # fmt: skip
    request = RunRequest(tmp_path / "task.yaml", task, tmp_path / "out", settings, True, keys, connection)
    line = resume_command(request)
    assert "cbpt_secret" not in line and "not echoed" not in line
    words = shlex.split(line)
    parsed = _tune_command().make_context("tune", words[2:]).params
    names = [name for name in TunerSettings.names() if name != "seed"]  # --optimizer-seed sets it
    resumed = TunerSettings(**{name: parsed[name] for name in names}, seed=parsed["optimizer_seed"])
    assert resumed == settings and parsed["shots_seed"] == 4 and parsed["seed"] is None
    assert parsed["resume"] and parsed["encrypt_vector"] and parsed["server"] == "example.com:443"
    assert parsed["ca_cert"] == tmp_path / "ca.pem" and parsed["key_file"] == tmp_path / "k.key"


def test_a_class_never_predicted_on_dev_gets_a_note_naming_it_and_the_remedy() -> None:
    from cbpt.client.cli.tune_session import unpredicted_classes_note

    names = ("negative", "neutral", "positive")
    lost = {"confusion_matrix": [[5, 0, 1], [3, 0, 3], [1, 0, 5]]}  # rows true, columns predicted
    assert unpredicted_classes_note(lost, names, fit_bias=False) == [
        "on dev the tuned vector never predicts 'neutral'; --fit-bias often brings it back"
    ]
    assert unpredicted_classes_note(lost, names, fit_bias=True) == [
        "on dev the tuned vector never predicts 'neutral'"
    ]
    every = {"confusion_matrix": [[5, 1, 0], [1, 4, 1], [0, 1, 5]]}
    assert unpredicted_classes_note(every, names, fit_bias=False) == []
    assert unpredicted_classes_note(None, names, fit_bias=False) == []  # no dev split
    assert unpredicted_classes_note(lost, None, fit_bias=False) == []  # per-example choices: no classes
