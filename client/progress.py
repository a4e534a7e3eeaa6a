"""The ``cbpt tune`` progress bar: calls used of the budget, best loss, dev accuracy, ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cbpt.client.results import HistoryRow


class TuningProgress:
    """A rich progress bar fed by ``Tuner(on_generation=progress.update)``."""

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
