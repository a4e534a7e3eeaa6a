"""What ``evaluate`` and ``predict`` score: a tuned vector (or zero-shot) on a file or a hold-out split,
fitted to the server before the first row, with a progress bar over the rows.

The rows are sent in a shuffled order and their scores put back in file order: a file sorted by
label (or by anything private) would otherwise tell the server its order through the order of the
texts. The shuffle's seed is fresh each run unless given, so the server cannot undo it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from cbpt.client.cli.progress import RowsProgress
from cbpt.client.errors import ConfigError, TaskError
from cbpt.client.files.artifacts import TunedTask, load_tuned, read_card, read_task_format
from cbpt.client.files.crypto import KeySpec
from cbpt.client.rpc.batches import predict_in_batches
from cbpt.client.rpc.sdk import TuningClient
from cbpt.common.tasks.fitting import fit_examples
from cbpt.common.tasks.loaders import Row, read_rows
from cbpt.common.tasks.task import Examples, Task, TaskFormat


@dataclass(frozen=True)
class Inputs:
    """What to score, and what it came from (for messages and ``--json``)."""

    folder: Path | None  # a tuned-task folder, or None for zero-shot
    task_format: TaskFormat
    examples: Examples
    source: dict[str, Any]  # {"file": ...} or {"holdout": fraction, "holdout_seed": ..., "task": ...}
    rows: list[Row] | None = None  # the file's raw rows (predict passes ids through)


def _holdout_task(task_file: Path, folder: Path | None) -> Task:
    """The task whose shots a hold-out must avoid: for a tuned folder, sampled as that run sampled."""
    task = Task.from_file(task_file)
    if folder is None:
        return task
    tuned = read_task_format(folder)  # also checks the folder is one
    card = read_card(folder)
    recorded = card.get("task") or {}
    for name in ("shots_per_class", "dev_per_class"):
        if recorded.get(name) is not None and recorded[name] != getattr(task, name):
            raise TaskError(
                f"--task {task_file}: {name} is {getattr(task, name)}, "
                f"the run in {folder} used {recorded[name]}"
            )
    task = task.with_seed(int(recorded.get("seed", task.seed)))
    task.load()
    if recorded.get("train_sha256") and task.metadata()["train_sha256"] != recorded["train_sha256"]:
        raise TaskError(f"--task {task_file}: its training file is not the one {folder} was tuned on")
    if tuned.format_spec() != task.format_only().format_spec():
        raise TaskError(
            f"--task {task_file}: its template or choices differ from those {folder} was tuned with"
        )
    return task


def resolve_inputs(
    first: Path | None,
    second: Path | None,
    *,
    zero_shot: bool,
    task_file: Path | None,
    holdout: float | None,
    holdout_seed: int,
    labels: bool,
) -> Inputs:
    """Check the arguments' combination and read the examples (before any key or connection)."""
    if holdout is not None:
        folder = None if zero_shot else first
        if (
            task_file is None
            or (zero_shot and first is not None)
            or second is not None
            or (not zero_shot and first is None)
        ):
            raise ConfigError("--holdout takes --task TASK and TUNED_DIR (or --zero-shot), and no FILE")
        task = _holdout_task(task_file, folder)
        source = {
            "holdout": holdout,
            "holdout_seed": holdout_seed,
            "task": str(task_file),
            "shots_seed": task.seed,
        }
        fmt = read_task_format(folder) if folder is not None else task.format_only()
        return Inputs(folder, fmt, task.holdout(holdout, holdout_seed), source)
    if zero_shot:
        if task_file is None or second is not None:
            raise ConfigError(
                "--zero-shot takes --task TASK and at most one FILE (default: the task's test file)"
            )
        task = Task.from_file(task_file)
        if first is None:
            if task.data.test is None:
                raise TaskError(
                    f"task {task.name!r} has no data.test file; give a FILE or --holdout FRACTION"
                )
            return Inputs(None, task.format_only(), task.test(), {"file": str(task.data.test)})
        rows = read_rows(first, "FILE")
        examples = task.examples(rows, str(first), require_labels=labels)
        return Inputs(None, task.format_only(), examples, {"file": str(first)}, rows)
    if first is None or second is None:
        raise ConfigError("give TUNED_DIR and FILE (or --zero-shot --task TASK [FILE], or --holdout)")
    fmt = read_task_format(first)
    rows = read_rows(second, "FILE")
    return Inputs(
        first, fmt, fmt.examples(rows, str(second), require_labels=labels), {"file": str(second)}, rows
    )


@dataclass(frozen=True)
class Scored:
    log_probs: np.ndarray  # [examples, choices], a tuned vector's bias applied
    examples: Examples  # as sent: after truncation
    truncated: int
    tuned: TunedTask | None


def sending_order(count: int, seed: int | None) -> np.ndarray:
    """A permutation of the rows to send them in (fresh entropy when ``seed`` is None)."""
    return np.random.default_rng(seed).permutation(count)


def score(
    client: TuningClient,
    inputs: Inputs,
    key: KeySpec,
    *,
    verify: bool,
    quiet: bool,
    label: str,
    order_seed: int | None = None,
) -> Scored:
    """Fit the texts to the server (or refuse a row), then score them with a progress bar, sending the
    rows shuffled (``sending_order``); what comes back is in file order."""
    tuned = load_tuned(inputs.folder, key=key, verify=verify) if inputs.folder is not None else None
    if tuned is not None:
        tuned.check_server(client)
    where = inputs.source.get("file") or "data.train (hold-out)"
    order = sending_order(len(inputs.examples), order_seed)
    fitted = fit_examples(client, inputs.examples.take(order), inputs.task_format.truncate, str(where))
    examples = fitted.examples
    console = Console(stderr=True)
    if tuned is not None and tuned.partial and not quiet:
        console.print(f"note: {inputs.folder} holds the best vector so far of an unfinished run")
    with RowsProgress(console, len(examples), label, quiet=quiet) as progress:
        if tuned is not None:
            log_probs = tuned.log_probs(client, examples, on_rows=progress.advance)
        else:
            empty = np.zeros(0, dtype=np.float32)
            mode = inputs.task_format.mode
            log_probs = predict_in_batches(client, "none", empty, examples, mode, on_rows=progress.advance)
    in_file_order = np.argsort(order)
    return Scored(log_probs[in_file_order], examples.take(in_file_order), fitted.truncated, tuned)
