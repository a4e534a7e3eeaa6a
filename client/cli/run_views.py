"""``cbpt show RUN`` and ``cbpt runs [ROOT]``: a run's status, calls, best dev metrics and curve, from its
folder.

Nothing here needs a key or a server: task.json and history.jsonl are plaintext by design (they
hold metrics, never data), so a run can be watched from another terminal while it tunes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cbpt.client.cli.app import JsonOutput, friendly_errors, print_json
from cbpt.client.errors import ArtifactError
from cbpt.client.tuning.runs import RunSummary, find_runs

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float]) -> str:
    """One character per value, low to high (at most 60: longer curves are sampled evenly)."""
    if not values:
        return ""
    if len(values) > 60:
        values = [values[round(i * (len(values) - 1) / 59)] for i in range(60)]
    low, high = min(values), max(values)
    span = high - low
    return "".join(_BARS[0 if span == 0 else round((v - low) / span * (len(_BARS) - 1))] for v in values)


def _figure(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@friendly_errors
def show(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder (tune --out).")],
    as_json: JsonOutput = False,
) -> None:
    """A run's status, calls used, best dev metrics and curve (while it runs, too)."""
    summary = RunSummary.read(run)
    if as_json:
        print_json(summary.to_json())
        return
    table = Table(title=f"run {run}", show_header=False)
    budget = f" of {summary.budget}" if summary.budget else ""
    for name, value in (
        ("status", summary.status),
        ("task", summary.task or "-"),
        ("adapter / optimizer", f"{summary.adapter or '-'} / {summary.optimizer or '-'}"),
        ("calls used", f"{summary.calls_used}{budget}"),
        ("best dev accuracy", _figure(summary.to_json()["dev_accuracy"])),
        ("best dev macro-F1", _figure(summary.to_json()["dev_macro_f1"])),
        ("train loss", _figure(summary.train_loss)),
        ("stop reason", summary.stop_reason or "-"),
        ("updated", summary.updated_at or "-"),
    ):
        table.add_row(name, value)
    losses = [row.best_loss for row in summary.curve]
    dev = [row.dev_accuracy for row in summary.curve if row.dev_accuracy is not None]
    if losses:
        table.add_row("best loss curve", f"{sparkline(losses)}  {losses[0]:.4f} -> {losses[-1]:.4f}")
    if dev:
        table.add_row("dev accuracy curve", f"{sparkline(dev)}  {dev[0]:.3f} -> {dev[-1]:.3f}")
    Console().print(table)


@friendly_errors
def runs(
    root: Annotated[Path, typer.Argument(metavar="ROOT", help="Folder holding run folders.")] = Path("runs"),
    as_json: JsonOutput = False,
) -> None:
    """Every run folder under ROOT: status, calls used and best dev accuracy."""
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a folder")
    summaries = [RunSummary.read(folder) for folder in find_runs(root)]
    if as_json:
        print_json({"root": str(root), "runs": [summary.to_json(curve=False) for summary in summaries]})
        return
    if not summaries:
        typer.echo(f"no run folders under {root}")
        return
    table = Table("run", "status", "task", "adapter", "calls", "dev accuracy", "stop reason")
    for summary in summaries:
        budget = f"/{summary.budget}" if summary.budget else ""
        table.add_row(
            str(summary.folder),
            summary.status,
            summary.task or "-",
            summary.adapter or "-",
            f"{summary.calls_used}{budget}",
            _figure(summary.to_json()["dev_accuracy"]),
            summary.stop_reason or "-",
        )
    Console().print(table)
