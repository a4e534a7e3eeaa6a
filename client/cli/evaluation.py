"""``cbpt evaluate`` and ``cbpt predict``: a tuned vector (or zero-shot) on a data file; labels stay here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from cbpt.client.artifacts import load_tuned, read_task_format
from cbpt.client.cli.app import friendly_errors
from cbpt.client.cli.connection import Connection, connection_options
from cbpt.client.cli.keys import KeySource, key_options
from cbpt.client.crypto import KeySpec
from cbpt.client.errors import ConfigError
from cbpt.client.losses import calibrate, metrics
from cbpt.client.sdk import TuningClient
from cbpt.client.task import Examples, Task
from cbpt.common.files import write_atomic


def _score(
    client: TuningClient, examples: Examples, tuned_dir: Path | None, task: Task | None, key: KeySpec
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    if tuned_dir is not None:
        tuned = load_tuned(tuned_dir, key=key)
        return tuned.log_probs(client, examples), tuned.format.class_names
    assert task is not None
    empty = np.zeros(0, dtype=np.float32)
    return client.predict(
        "none", empty, examples.texts, examples.choices, task.mode, examples.cue
    ), task.class_names


def _inputs(
    first: Path | None, second: Path | None, zero_shot: bool, task_file: Path | None, *, labels: bool
) -> tuple[Path | None, Task | None, Examples]:
    if zero_shot:
        if task_file is None or second is not None:
            raise ConfigError(
                "--zero-shot takes --task TASK and at most one FILE (default: the task's test file)"
            )
        task = Task.from_file(task_file)
        if first is None:
            return None, task, task.test()
        return None, task, task.load_examples(first, require_labels=labels, field="FILE")
    if first is None or second is None:
        raise ConfigError("give TUNED_DIR and FILE (or --zero-shot --task TASK [FILE])")
    tuned_format = read_task_format(first)
    return first, None, tuned_format.load_examples(second, require_labels=labels, field="FILE")


@friendly_errors
@connection_options()
@key_options
def evaluate(
    tuned_dir: Annotated[Path | None, typer.Argument(metavar="TUNED_DIR", help="Tuned-task folder.")] = None,
    file: Annotated[Path | None, typer.Argument(metavar="FILE", help="Labelled data file.")] = None,
    zero_shot: Annotated[bool, typer.Option("--zero-shot", help="No vector: adapter 'none'.")] = False,
    task_file: Annotated[Path | None, typer.Option("--task", help="Task file for --zero-shot.")] = None,
    calibrated: Annotated[bool, typer.Option("--calibrate", help="Mean-centred calibration.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    *,
    keys: KeySource,
    connection: Connection,
) -> None:
    """Accuracy, macro-F1 and confusion matrix on FILE, computed here from the server's log-probs."""
    folder, task, examples = _inputs(tuned_dir, file, zero_shot, task_file, labels=True)
    assert examples.labels is not None  # read with labels=True
    with connection.client() as client:
        log_probs, class_names = _score(client, examples, folder, task, keys.key())
    if calibrated:
        log_probs = calibrate(log_probs)
    result = metrics(log_probs, examples.labels, examples.num_choices)
    if as_json:
        typer.echo(json.dumps(result))
        return
    names = list(class_names) if class_names else [f"option {i}" for i in range(examples.num_choices)]
    console = Console()
    console.print(
        f"accuracy {result['accuracy']:.4f}   macro-F1 {result['macro_f1']:.4f}   examples {result['num_examples']}"
    )
    table = Table("true \\ predicted", *names, title="confusion matrix")
    confusion: list[list[int]] = result["confusion_matrix"]
    for name, row in zip(names, confusion, strict=True):
        table.add_row(name, *(str(count) for count in row))
    console.print(table)


@friendly_errors
@connection_options()
@key_options
def predict(
    tuned_dir: Annotated[Path, typer.Argument(metavar="TUNED_DIR", help="Tuned-task folder.")],
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Data file (labels not needed).")],
    out: Annotated[Path, typer.Option("--out", help="Predictions as JSON lines.")] = Path("preds.jsonl"),
    *,
    keys: KeySource,
    connection: Connection,
) -> None:
    """Predict FILE with a tuned vector; write one line per row with the prediction and probabilities."""
    folder, _, examples = _inputs(tuned_dir, file, False, None, labels=False)
    with connection.client() as client:
        log_probs, class_names = _score(client, examples, folder, None, keys.key())
    probabilities = np.exp(log_probs)
    lines = []
    for index, row in enumerate(probabilities):
        names = list(class_names) if class_names else list(examples.choices.of_example(index))
        best = int(np.argmax(log_probs[index]))
        record = {
            "row": examples.rows[index],
            "prediction": names[best],
            "index": best,
            "probabilities": {name: round(float(p), 6) for name, p in zip(names, row, strict=False)},
        }
        lines.append(json.dumps(record) + "\n")
    write_atomic(out, "".join(lines).encode("utf-8"), mode=0o644)
    typer.echo(f"wrote {len(lines)} predictions to {out}")
