"""Progress bars: ``cbpt tune`` (calls used of the budget, best loss, dev accuracy, ETA) and
``evaluate``/``predict`` (rows done, rows/s, ETA); both silent with --json or off a terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from cbpt.client.tuning.results import HistoryRow

if TYPE_CHECKING:
    from cbpt.client.tuning.tuner import Tuner


class TuningProgress:
    """A rich progress bar fed after every generation: ``tuner.register_callback("tell", progress)``."""

    def __init__(self, console: Console, budget: int, *, quiet: bool = False) -> None:
        self._progress = Progress(
            TextColumn("[bold]tuning"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("calls"),
            TextColumn("best loss {task.fields[loss]}"),
            TextColumn("dev acc {task.fields[dev]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=quiet or not console.is_terminal,  # a log file or --json gets no bar
        )
        self._task = self._progress.add_task("tune", total=budget, loss="-", dev="-")
        self._best_dev: float | None = None
        self.generations_done = 0

    def __enter__(self) -> TuningProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._progress.stop()

    def __call__(self, tuner: Tuner, row: HistoryRow) -> None:
        self.update(row)

    def update(self, row: HistoryRow) -> None:
        self.generations_done = row.generation + 1
        if row.dev_accuracy is not None and (self._best_dev is None or row.dev_accuracy > self._best_dev):
            self._best_dev = row.dev_accuracy
        self._progress.update(
            self._task,
            completed=row.calls_used,
            loss=f"{row.best_loss:.4f}",
            dev="-" if self._best_dev is None else f"{self._best_dev:.3f}",
        )


class _RowRate(ProgressColumn):
    """Rows per second so far (rich's own speed columns speak bytes)."""

    def render(self, task: Task) -> Text:
        return Text("- rows/s" if task.speed is None else f"{task.speed:.1f} rows/s")


class RowsProgress:
    """Rows scored of a file, rows/s and ETA, for ``evaluate`` and ``predict``; silent with --json
    or when stderr is not a terminal."""

    def __init__(self, console: Console, total: int, label: str, *, quiet: bool = False) -> None:
        self._progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            _RowRate(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=quiet or not console.is_terminal,
        )
        self._task = self._progress.add_task(label, total=total)

    def __enter__(self) -> RowsProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def advance(self, rows: int) -> None:
        self._progress.advance(self._task, rows)
