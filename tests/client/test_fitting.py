"""Long inputs: the pre-flight check counts every train and dev text on the server before any scoring,
shortens the field ``truncate`` names (never the answer cue), or refuses the row with its length."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cbpt.client.cli import app
from cbpt.client.errors import TaskError
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.tuner import Tuner
from cbpt.common.tasks.fitting import fit_examples
from cbpt.common.tasks.task import Task
from cbpt.common.tasks.task_format import TaskFormat
from tests.client.helpers import TaskFactory, labelled_rows

TOKENS, CHARS = 24, 400
runner = CliRunner()


@pytest.fixture(scope="module")
def short_server() -> Iterator[str]:
    """The tiny model behind a 24-token, 400-character text limit."""
    testing = pytest.importorskip("cbpt.server.testing")
    from cbpt.common.limits import Limits
    from cbpt.server.front.app import serve_in_background
    from cbpt.server.settings import ServerSettings

    engine = testing.tiny_engine(limits=Limits(max_text_tokens=TOKENS, max_text_chars=CHARS))
    settings = ServerSettings.from_flags(
        host="127.0.0.1", port=0, insecure=True, allow_no_auth=True, grace_seconds=1
    )
    with serve_in_background(engine, settings) as target:
        yield target


def _long_rows() -> list[dict]:
    rows = labelled_rows(12)
    for index in (3, 10):  # row numbers 4 and 11 of the file
        rows[index] = {**rows[index], "text": "a gripping and very long story " * 8 + f"#{index}"}
    return rows


def test_a_text_over_the_token_limit_is_refused_before_anything_is_scored(
    short_server: str, make_task: TaskFactory
) -> None:
    task = Task.from_file(make_task(rows=_long_rows(), shots=12, dev=0))
    with TuningClient(short_server) as client:
        tuner = Tuner(client, task, budget=4, popsize=4)
        with pytest.raises(
            TaskError,
            match=(
                rf"data\.train row 4: \d+ tokens exceed the server's limit of {TOKENS} "
                r"\(and 1 more text\);"
            ),
        ):
            tuner.prepare()
        assert client.stats.candidate_evaluations == 0  # nothing was scored


@pytest.mark.parametrize("side", ["end", "start"])
def test_truncation_shortens_the_field_and_never_the_cue(
    short_server: str, make_task: TaskFactory, side: str
) -> None:
    task = Task.from_file(make_task(rows=_long_rows(), shots=12, dev=0, truncate={"side": side}))
    original = dict(zip(task.train.rows, task.train.texts, strict=True))
    with TuningClient(short_server) as client:
        tuner = Tuner(client, task, budget=4, popsize=4)
        train, _ = tuner.prepare()
        assert tuner.truncated == 2
        counts = client.count_tokens(train.texts)
        assert max(counts) <= TOKENS and max(counts) >= TOKENS - 6  # fits, and is not cut far below
        assert train.cue == "\nSentiment:"  # the cue travels apart and is never cut
        for row, text in zip(train.rows, train.texts, strict=True):
            before = original[row]
            assert text.startswith("Review: ")  # only the field is shortened, not the template
            field, full = text.removeprefix("Review: "), before.removeprefix("Review: ")
            assert (full.startswith(field) if side == "end" else full.endswith(field)) and len(field) <= len(
                full
            )
        result = tuner.run()
        assert result.calls_used == 4


def test_a_named_field_is_cut_and_the_others_kept(short_server: str, make_task: TaskFactory) -> None:
    rows = [{"context": "the quick brown fox jumps over the lazy dog " * (2 + i % 5), "question": f"q{i}?",
             "label": label}
            for i, label in enumerate(["LABEL_SECRET_A", "LABEL_SECRET_B"] * 6)]  # fmt: skip
    task = Task.from_file(
        make_task(rows=rows, shots=4, dev=2, template="Context: {context}\nQuestion: {question}\nAnswer:",
                  truncate={"field": "context", "max_tokens": 22})
    )  # fmt: skip
    with TuningClient(short_server) as client:
        train, dev = Tuner(client, task, budget=4, popsize=4).prepare()
        assert max(client.count_tokens([*train.texts, *dev.texts])) <= 22  # the task's own cap
    for text in (*train.texts, *dev.texts):
        assert text.startswith("Context: the quick") and "\nQuestion: q" in text


def test_characters_over_the_limit_are_cut_first_or_refused(short_server: str) -> None:
    plain = TaskFormat(template="Review: {text}\nSentiment:", choices={"a": " positive"})
    examples = plain.examples([{"text": "x" * (CHARS + 50), "label": "a"}], "f.jsonl")
    with TuningClient(short_server) as client:
        with pytest.raises(
            TaskError, match=rf"f\.jsonl row 1: {CHARS + 58} characters exceed the server's limit"
        ):
            fit_examples(client, examples, None, "f.jsonl")
        cut = plain.model_copy(update={"truncate": None})
        truncating = TaskFormat.model_validate({**cut.format_spec(), "truncate": "end"})
        fitted = fit_examples(client, truncating.examples([{"text": "long story " * 60, "label": "a"}], "f"),
                              truncating.truncate, "f")  # fmt: skip
        assert fitted.truncated == 1 and client.count_tokens(fitted.examples.texts)[0] <= TOKENS


def test_cbpt_tune_fails_before_the_progress_bar_with_the_row_and_its_length(
    short_server: str, make_task: TaskFactory, tmp_path: Path
) -> None:
    args = ["--server", short_server, "--budget", 4, "--popsize", 4]
    too_long = make_task("long.yaml", rows=_long_rows(), shots=12, dev=0)
    result = runner.invoke(app, [str(a) for a in ["tune", too_long, "--out", tmp_path / "never", *args]])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "data.train row 4:" in lines[0] and f"limit of {TOKENS}" in lines[0] and "truncate:" in lines[0]
    assert not (tmp_path / "never" / "checkpoint.cbpt").exists()
    fitting = make_task("fit.yaml", rows=_long_rows(), shots=12, dev=0, truncate="end")
    done = runner.invoke(app, [str(a) for a in ["tune", fitting, "--out", tmp_path / "ok", *args, "--json"]])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["notes"][0] == "shortened 2 train/dev texts to fit the server"
    card = json.loads((tmp_path / "ok" / "task.json").read_text())
    assert card["task_format"]["truncate"] == {"field": "text", "side": "end", "max_tokens": None}


def test_a_resume_must_fit_the_texts_as_the_run_did(
    short_server: str, make_task: TaskFactory, tmp_path: Path
) -> None:
    """Truncated texts depend on the server's limit: a resume against another limit is refused."""
    testing = pytest.importorskip("cbpt.server.testing")
    from cbpt.client.errors import CheckpointError
    from cbpt.common.limits import Limits
    from cbpt.server.front.app import serve_in_background
    from cbpt.server.settings import ServerSettings

    task = Task.from_file(make_task(rows=_long_rows(), shots=12, dev=0, truncate="end"))
    path = tmp_path / "run.cbpt"
    settings = {"budget": 8, "popsize": 4, "checkpoint": path}
    with TuningClient(short_server) as client:
        Tuner(client, task, **settings).run()
        assert Tuner(client, task, **{**settings, "budget": 12}).run(resume=True).calls_used == 12
    shorter = testing.tiny_engine(limits=Limits(max_text_tokens=TOKENS - 4, max_text_chars=CHARS))
    with (
        serve_in_background(
            shorter, ServerSettings.from_flags(host="127.0.0.1", port=0, insecure=True, allow_no_auth=True)
        ) as target,
        TuningClient(target) as client,
        pytest.raises(CheckpointError, match="another fitted_texts"),
    ):
        Tuner(client, task, **{**settings, "budget": 16}).run(resume=True)
