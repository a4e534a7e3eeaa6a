"""``evaluate`` and ``predict``: one scoring pass for plain and calibrated figures, progress over rows,
``--holdout``, ids and texts passed through, ``--json``, and refusing a modified vector file."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from cbpt.client.cli import app
from cbpt.client.cli import progress as progress_module
from cbpt.client.cli import scoring as cli_scoring
from cbpt.client.cli.progress import RowsProgress
from cbpt.client.rpc.batches import RequestBatching, predict_in_batches, request_spans
from cbpt.client.rpc.sdk import TuningClient
from cbpt.common.losses import calibrate, metrics
from cbpt.common.tasks.task import Task
from cbpt.server.front.app import serve_in_background
from cbpt.server.testing import tiny_engine
from tests.client.helpers import LABELS, TaskFactory, labelled_rows, write_jsonl
from tests.server.helpers import GatedEngine

runner = CliRunner()


def cbpt(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture
def tuned(server: str, make_task: TaskFactory, tmp_path: Path) -> tuple[Path, Path]:
    """(task file, tuned folder)."""
    task_path = make_task()
    out = tmp_path / "tuned"
    result = cbpt(
        "tune", task_path, "--server", server, "--out", out, "--budget", 8, "--popsize", 4, "--fit-bias"
    )
    assert result.exit_code == 0, result.output
    return task_path, out


def test_evaluate_reports_plain_and_calibrated_from_one_scoring_pass(
    server: str, tuned: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, client: TuningClient
) -> None:
    task_path, out = tuned
    test_file = task_path.parent / "data" / "test.jsonl"
    calls: list[int] = []
    evaluate = TuningClient.evaluate

    def counted(self, *args, **kwargs):
        calls.append(1)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(TuningClient, "evaluate", counted)
    document = json.loads(cbpt("evaluate", out, test_file, "--server", server, "--json").output)
    assert len(calls) == 1  # one pass (8 rows, one batch) for both figures
    assert document["calibration"] == "none" and document["accuracy"] == document["plain"]["accuracy"]
    assert set(document["calibrated"]) == {"accuracy", "macro_f1", "confusion_matrix", "num_examples"}
    assert document["source"] == {"file": str(test_file)} and document["vector"]["partial"] is False
    monkeypatch.setattr(TuningClient, "evaluate", evaluate)
    leading = json.loads(cbpt("evaluate", out, test_file, "--server", server, "--json", "--calibrate").output)
    assert (
        leading["accuracy"] == document["calibrated"]["accuracy"] and leading["calibration"] == "mean-centred"
    )
    task = Task.from_file(task_path)
    examples = task.load_examples(test_file)
    raw = json.loads(
        cbpt("evaluate", "--zero-shot", "--task", task_path, "--server", server, "--json").output
    )
    zero = client.predict("none", np.zeros(0), examples.texts, examples.choices, cue=examples.cue)
    assert raw["calibrated"] == metrics(calibrate(zero), examples.labels, 2)
    text = cbpt("evaluate", out, test_file, "--server", server)
    assert "plain" in text.output and "calibrated" in text.output and "confusion matrix" in text.output


def test_rows_are_scored_in_batches_with_progress(
    client: TuningClient, make_task: TaskFactory, monkeypatch: pytest.MonkeyPatch, tuned: tuple[Path, Path],
    server: str,
) -> None:  # fmt: skip
    examples = Task.from_file(make_task()).test()
    seen: list[int] = []
    batched = predict_in_batches(
        client, "none", np.zeros(0), examples, "first_token", on_rows=seen.append,
        batching=RequestBatching(max_rows=3, in_flight=2),
    )  # fmt: skip
    whole = client.predict("none", np.zeros(0), examples.texts, examples.choices, cue=examples.cue)
    np.testing.assert_allclose(batched, whole, atol=1e-6)  # other batch shapes: float rounding only
    assert sorted(seen) == [2, 3, 3]  # as each answer arrived (two requests in flight)
    shown = io.StringIO()
    console = Console(file=shown, force_terminal=True, width=100)
    with RowsProgress(console, 8, "evaluating") as progress:
        progress.advance(8)
    assert "8/8" in shown.getvalue() and "rows/s" in shown.getvalue()
    silent = io.StringIO()
    with RowsProgress(Console(file=silent, force_terminal=True), 8, "evaluating", quiet=True) as progress:
        progress.advance(8)
    assert silent.getvalue() == ""
    advanced: list[int] = []
    monkeypatch.setattr(progress_module.RowsProgress, "advance", lambda self, rows: advanced.append(rows))
    task_path, out = tuned
    assert cbpt("evaluate", out, task_path.parent / "data" / "test.jsonl", "--server", server).exit_code == 0
    assert advanced == [8]  # evaluate reports its rows as it goes (predict too, through the same path)


def test_requests_are_sized_by_text_and_rows() -> None:
    batching = RequestBatching(request_chars=10, max_rows=3)
    spans = request_spans([4, 4, 4, 1, 1, 1, 1, 30, 2], batching)
    assert spans == [range(0, 2), range(2, 5), range(5, 7), range(7, 8), range(8, 9)]  # a long row alone
    assert request_spans([], batching) == []
    with pytest.raises(ValueError, match="in_flight must be at least 1"):
        RequestBatching(in_flight=0)


class Outstanding(grpc.UnaryUnaryClientInterceptor):
    """Counts the client's calls on their way (sent, not yet answered), and the most at once."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self._changed = threading.Condition()

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        with self._changed:
            self.now += 1
            self.most = max(self.most, self.now)
            self._changed.notify_all()
        try:
            return continuation(client_call_details, request)  # a blocking call: answered on return
        finally:
            with self._changed:
                self.now -= 1

    def reached(self, count: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.now >= count, timeout=30)


def test_a_second_request_is_on_its_way_while_the_first_runs(make_task: TaskFactory) -> None:
    """The server never waits for the client between requests: with the first held at the engine, the
    second is already sent; never more than ``in_flight`` at once."""
    gate = GatedEngine(tiny_engine())
    examples = Task.from_file(make_task()).test()
    outstanding = Outstanding()
    scored: list[np.ndarray] = []
    with serve_in_background(gate) as target, TuningClient(target, interceptors=[outstanding]) as client:
        client.info()
        batching = RequestBatching(max_rows=3, in_flight=2)
        worker = threading.Thread(
            target=lambda: scored.append(
                predict_in_batches(client, "none", np.zeros(0), examples, "first_token", batching=batching)
            )
        )
        worker.start()
        assert gate.entered.wait(30)
        assert outstanding.reached(2)  # the first request is held at the engine; the second is sent
        gate.release.set()
        worker.join(60)
        whole = client.predict("none", np.zeros(0), examples.texts, examples.choices, cue=examples.cue)
    assert outstanding.most == 2 and len(scored) == 1
    np.testing.assert_allclose(scored[0], whole, atol=1e-6)


def test_predict_passes_ids_and_texts_through(server: str, tuned: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = tuned
    rows = [{"id": "r-7", "text": "what a film"}, {"id": 9, "text": "so dull"}, {"text": "no id here"}]
    data = write_jsonl(tmp_path / "new.jsonl", rows)
    preds = tmp_path / "preds.jsonl"
    summary = cbpt("predict", out, data, "--server", server, "--out", preds, "--with-text", "--json")
    assert summary.exit_code == 0, summary.output
    document = json.loads(summary.output)
    assert (
        document["predictions"] == 3
        and sum(document["counts"].values()) == 3
        and document["out"] == str(preds)
    )
    records = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [record.get("id") for record in records] == ["r-7", 9, None]
    assert [record["text"] for record in records] == [f"Review: {row['text']}" for row in rows]
    assert all(record["prediction"] in LABELS for record in records)
    plain = cbpt("predict", out, data, "--server", server, "--out", preds)
    assert plain.exit_code == 0 and "text" not in json.loads(preds.read_text().splitlines()[0])
    other = cbpt("predict", out, data, "--server", server, "--out", preds, "--id-field", "key")
    assert other.exit_code == 2 and "row 1: no field 'key'" in other.output


def test_rows_are_sent_shuffled_and_come_back_in_file_order(
    server: str, tuned: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 10 of #22: a test or held-out file was sent in file order, so a label-sorted file told
    the server where each label's rows are. Rows go out shuffled; predictions stay in file order."""
    _, out = tuned
    rows = sorted(labelled_rows(6, offset=200), key=lambda row: row["label"])  # sorted by label
    data = write_jsonl(tmp_path / "sorted.jsonl", rows)
    file_texts = [f"Review: {row['text']}" for row in rows]
    sent: list[str] = []
    predict = TuningClient.predict

    def recording(self, adapter, vector, texts, *args, **kwargs):
        sent.extend(texts)
        return predict(self, adapter, vector, texts, *args, **kwargs)

    monkeypatch.setattr(TuningClient, "predict", recording)

    def records(*options: object) -> list[dict]:
        preds = tmp_path / "preds.jsonl"
        done = cbpt("predict", out, data, "--server", server, "--out", preds, "--with-text", *options)
        assert done.exit_code == 0, done.output
        return [json.loads(line) for line in preds.read_text().splitlines()]

    shuffled = records("--order-seed", 1)
    assert sorted(sent) == sorted(file_texts) and sent != file_texts
    assert [record["text"] for record in shuffled] == file_texts
    assert [record["row"] for record in shuffled] == list(range(len(rows)))
    first_run, sent[:] = list(sent), []
    records()  # unseeded: a fresh order each run
    assert sorted(sent) == sorted(file_texts) and sent != first_run
    monkeypatch.setattr(cli_scoring, "sending_order", lambda count, seed: np.arange(count))
    in_file_order = records()
    for got, expected in zip(shuffled, in_file_order, strict=True):  # the same scores, row by row
        assert got["prediction"] == expected["prediction"]
        for name, p in expected["probabilities"].items():
            assert got["probabilities"][name] == pytest.approx(p, abs=2e-6)


def test_holdout_for_a_task_without_a_test_file(server: str, make_task: TaskFactory, tmp_path: Path) -> None:
    task_path = make_task(per_class=20, data={"train": "data/train.jsonl"})  # 40 rows, no test file
    task = Task.from_file(task_path)
    held = task.holdout(0.3)
    assert len(held) == 12 and not set(held.rows) & (set(task.train.rows) | set(task.dev.rows))
    assert task.holdout(0.3).rows == held.rows and task.holdout(0.3, seed=1).rows != held.rows
    missing = cbpt("evaluate", "--zero-shot", "--task", task_path, "--server", server)
    assert missing.exit_code == 2 and "--holdout" in missing.output
    zero = json.loads(
        cbpt(
            "evaluate", "--zero-shot", "--task", task_path, "--holdout", 0.3, "--server", server, "--json"
        ).output
    )
    assert zero["num_examples"] == 12 and zero["source"]["holdout"] == 0.3
    out = tmp_path / "tuned"
    args = ("tune", task_path, "--server", server, "--out", out, "--budget", 8, "--popsize", 4, "--seed", 2)
    assert cbpt(*args).exit_code == 0
    scored = json.loads(
        cbpt("evaluate", out, "--task", task_path, "--holdout", 0.3, "--server", server, "--json").output
    )
    assert scored["num_examples"] == 12 and scored["source"]["shots_seed"] == 2  # the run's own shots avoided
    other = make_task("other.yaml", per_class=20, shots=5, data={"train": "data/train.jsonl"})
    refused = cbpt("evaluate", out, "--task", other, "--holdout", 0.3, "--server", server)
    assert refused.exit_code == 2 and "shots_per_class is 5, the run" in refused.output
    bad = cbpt("evaluate", "--zero-shot", "--task", task_path, "--holdout", 1.5, "--server", server)
    assert bad.exit_code == 2 and "between 0 and 1" in bad.output


def test_a_modified_vector_file_is_refused_by_evaluate(server: str, tuned: tuple[Path, Path]) -> None:
    task_path, out = tuned
    test_file = task_path.parent / "data" / "test.jsonl"
    vector = out / "vector.safetensors"
    data = bytearray(vector.read_bytes())
    data[-5] ^= 0x10
    vector.write_bytes(bytes(data))
    result = cbpt("evaluate", out, test_file, "--server", server)
    lines = [line for line in result.output.splitlines() if line.strip()]
    # CBPT_KEY_FILE is set here (conftest), so the run is keyed: its HMAC catches the flipped bit.
    assert (
        result.exit_code == 2
        and len(lines) == 1
        and "task.json with vector.safetensors: it failed authentication" in lines[0]
    )
    assert cbpt("evaluate", out, test_file, "--server", server, "--no-verify-vector").exit_code == 0


def test_two_identical_runs_write_byte_identical_vector_files(
    server: str, make_task: TaskFactory, tmp_path: Path
) -> None:
    task_path = make_task()
    for name in ("one", "two"):
        args = (
            "tune",
            task_path,
            "--server",
            server,
            "--out",
            tmp_path / name,
            "--budget",
            8,
            "--popsize",
            4,
            "--fit-bias",
        )
        assert cbpt(*args).exit_code == 0
    one, two = ((tmp_path / name / "vector.safetensors").read_bytes() for name in ("one", "two"))
    assert one == two
