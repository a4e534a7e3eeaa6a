"""``cbpt evaluate`` and ``cbpt predict``: a tuned vector (or zero-shot) on a data file; labels stay here.

``evaluate`` scores once and reports both the plain and the mean-centred calibrated figures
(``--calibrate`` picks which one leads the output and the top-level ``--json`` keys).
"""

from __future__ import annotations

import inspect
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from cbpt.client.cli.app import JsonOutput, friendly_errors, print_json
from cbpt.client.cli.connection import Connection, connection_options
from cbpt.client.cli.keys import KeySource, key_options
from cbpt.client.cli.scoring import Inputs, Scored, resolve_inputs, score
from cbpt.client.errors import TaskError
from cbpt.common.cli import Command, R, option_group
from cbpt.common.files import write_atomic
from cbpt.common.losses import calibrate, metrics

NoVerify = Annotated[
    bool,
    typer.Option(
        "--no-verify-vector", help="Use a vector file even if it is not the one task.json recorded."
    ),
]
OrderSeed = Annotated[
    int | None,
    typer.Option(
        help="Seed of the shuffled order rows are sent in (default: fresh each run, so the server "
        "cannot undo it); results are always in file order."
    ),
]


def _vector_document(scored: Scored) -> dict[str, Any] | None:
    tuned = scored.tuned
    if tuned is None:
        return None
    return {"folder": str(tuned.folder), "adapter": tuned.adapter, "partial": tuned.partial,
            "calls_used": tuned.card.get("calls_used")}  # fmt: skip


@dataclass(frozen=True)
class Sending:
    """How ``evaluate`` and ``predict`` send a file and report it: the options both take."""

    order_seed: int | None
    verify_vector: bool
    as_json: bool


def sending_options(command: Command[R]) -> Command[R]:
    """Give a command --order-seed, --no-verify-vector and --json as one ``sending`` object."""
    options = [
        inspect.Parameter("order_seed", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=OrderSeed),
        inspect.Parameter(
            "no_verify_vector", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=NoVerify
        ),
        inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOutput),
    ]

    def build(order_seed: int | None, no_verify_vector: bool, as_json: bool) -> Sending:
        return Sending(order_seed, not no_verify_vector, as_json)

    return option_group("sending", build, options)(command)


def _score_on_server(
    connection: Connection, keys: KeySource, inputs: Inputs, sending: Sending, label: str
) -> Scored:
    """One connection, the inputs scored over it (``evaluate`` and ``predict`` alike)."""
    with connection.client() as client:
        return score(
            client, inputs, keys.key(), verify=sending.verify_vector, quiet=sending.as_json, label=label,
            order_seed=sending.order_seed,
        )  # fmt: skip


@friendly_errors
@connection_options()
@key_options
@sending_options
def evaluate(
    tuned_dir: Annotated[Path | None, typer.Argument(metavar="TUNED_DIR", help="Tuned-task folder.")] = None,
    file: Annotated[Path | None, typer.Argument(metavar="FILE", help="Labelled data file.")] = None,
    zero_shot: Annotated[bool, typer.Option("--zero-shot", help="No vector: adapter 'none'.")] = False,
    task_file: Annotated[
        Path | None, typer.Option("--task", help="Task file (for --zero-shot or --holdout).")
    ] = None,
    calibrated: Annotated[
        bool, typer.Option("--calibrate", help="Lead with the calibrated figures (both are reported).")
    ] = False,
    holdout: Annotated[
        float | None,
        typer.Option(help="Score this fraction of the task's training file, disjoint from the shots."),
    ] = None,
    holdout_seed: Annotated[int, typer.Option(help="Seed of the hold-out sample.")] = 0,
    *,
    keys: KeySource,
    connection: Connection,
    sending: Sending,
) -> None:
    """Accuracy, macro-F1 and confusion matrix on FILE (plain and calibrated), computed here."""
    inputs = resolve_inputs(
        tuned_dir, file, zero_shot=zero_shot, task_file=task_file, holdout=holdout,
        holdout_seed=holdout_seed, labels=True,
    )  # fmt: skip
    scored = _score_on_server(connection, keys, inputs, sending, "evaluating")
    labels = scored.examples.labels
    assert labels is not None  # read with labels=True
    width = scored.examples.num_choices
    plain = metrics(scored.log_probs, labels, width)
    centred = metrics(calibrate(scored.log_probs), labels, width)
    lead = centred if calibrated else plain
    if sending.as_json:
        print_json(
            {**lead, "calibration": "mean-centred" if calibrated else "none", "plain": plain,
             "calibrated": centred, "source": inputs.source, "truncated": scored.truncated,
             "vector": _vector_document(scored)}
        )  # fmt: skip
        return
    class_names = inputs.task_format.class_names
    names = list(class_names) if class_names else [f"option {i}" for i in range(width)]
    console = Console()
    for title, figures in (("plain", plain), ("calibrated", centred)):
        console.print(
            f"{title:<11} accuracy {figures['accuracy']:.4f}   macro-F1 {figures['macro_f1']:.4f}   "
            f"examples {figures['num_examples']}"
        )
    which = "calibrated" if calibrated else "plain"
    table = Table("true \\ predicted", *names, title=f"confusion matrix ({which})")
    confusion: list[list[int]] = lead["confusion_matrix"]
    for name, row in zip(names, confusion, strict=True):
        table.add_row(name, *(str(count) for count in row))
    console.print(table)
    if scored.truncated:
        Console(stderr=True).print(f"note: shortened {scored.truncated} texts to the server's token limit")


@friendly_errors
@connection_options()
@key_options
@sending_options
def predict(
    tuned_dir: Annotated[Path, typer.Argument(metavar="TUNED_DIR", help="Tuned-task folder.")],
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Data file (labels not needed).")],
    out: Annotated[Path, typer.Option("--out", help="Predictions as JSON lines.")] = Path("preds.jsonl"),
    id_field: Annotated[
        str, typer.Option(help="Field of FILE copied to each prediction as 'id' (when rows have it).")
    ] = "id",
    with_text: Annotated[
        bool, typer.Option("--with-text", help="Also write each input as the model saw it ('text').")
    ] = False,
    *,
    keys: KeySource,
    connection: Connection,
    sending: Sending,
) -> None:
    """Predict FILE with a tuned vector; one line per row: row, id, prediction, probabilities."""
    inputs = resolve_inputs(
        tuned_dir, file, zero_shot=False, task_file=None, holdout=None, holdout_seed=0, labels=False
    )
    assert inputs.rows is not None  # read from FILE
    ids = [row.get(id_field) for row in inputs.rows]
    if id_field != "id" and (missing := [n for n, value in enumerate(ids) if value is None]):
        raise TaskError(f"{file} row {missing[0] + 1}: no field {id_field!r} for --id-field")
    scored = _score_on_server(connection, keys, inputs, sending, "predicting")
    examples, log_probs = scored.examples, scored.log_probs
    class_names = inputs.task_format.class_names
    probabilities = np.exp(log_probs)
    lines, counts = [], Counter[str]()
    for index, row in enumerate(probabilities):
        names = list(class_names) if class_names else list(examples.choices.of_example(index))
        best = int(np.argmax(log_probs[index]))
        record: dict[str, Any] = {"row": examples.rows[index]}
        if ids[index] is not None:
            record["id"] = ids[index]
        if with_text:
            record["text"] = examples.texts[index]
        record.update(
            prediction=names[best],
            index=best,
            probabilities={name: round(float(p), 6) for name, p in zip(names, row, strict=False)},
        )
        counts[names[best]] += 1
        lines.append(json.dumps(record) + "\n")
    write_atomic(out, "".join(lines).encode("utf-8"), mode=0o644)
    if sending.as_json:
        print_json({"out": str(out), "predictions": len(lines), "counts": dict(counts),
                    "truncated": scored.truncated, "vector": _vector_document(scored)})  # fmt: skip
        return
    typer.echo(f"wrote {len(lines)} predictions to {out}")
