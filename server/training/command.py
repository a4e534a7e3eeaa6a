"""``cbpt-server train-generator DOMAIN_FILE --out FOLDER``: its dtype, progress bar and last lines.

Every ``TrainSettings`` field is an option, generated from the model (``cbpt.common.cli``), the
model options are the server's own, and a run is resumed by giving the same command again.
"""

from __future__ import annotations

import shlex
import sys
import typing
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cbpt.server.errors import ConfigError

if typing.TYPE_CHECKING:
    import torch

    from cbpt.server.training.trainer import StepReport, TrainingResult

# fp32 by default, on a GPU too: the served model runs in fp32 on CPU, and the generator trains
# in the model's dtype (the engine casts adapters to it), so AdamW on bf16 weights is opt-in.
TRAIN_DTYPES = ("float32", "bfloat16", "float16", "auto")
TRAIN_DTYPE_HELP = (
    "float32 (the default, on a GPU too), bfloat16, float16, or auto (the server's own choice: "
    "bfloat16 on a GPU that supports it, float32 on CPU). The generator trains in this dtype."
)


def train_dtype(name: str) -> torch.dtype | None:
    """The torch dtype ``--dtype`` names; None for ``auto`` (``load_model``'s default for the device)."""
    if name not in TRAIN_DTYPES:
        raise ConfigError(f"--dtype {name!r}: expected one of {', '.join(TRAIN_DTYPES)}")
    from cbpt.server.model import DTYPES

    return DTYPES[name]


class TrainingProgress:
    """A rich bar: step of steps, loss, examples/s, dev accuracy, time remaining; quiet off a terminal."""

    def __init__(self, console: Console, steps: int, done: int = 0) -> None:
        self._progress = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} ex/s"),
            TextColumn("dev {task.fields[dev]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self._task = self._progress.add_task(
            "train", total=steps, completed=done, loss="-", rate="-", dev="-"
        )
        self._console = console

    def __enter__(self) -> TrainingProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def update(self, report: StepReport) -> None:
        dev = "-" if report.dev_accuracy is None else f"{report.dev_accuracy:.3f}"
        self._progress.update(
            self._task,
            completed=report.step,
            loss=f"{report.loss:.4f}",
            rate=f"{report.examples_per_second:.1f}",
            dev=dev,
        )
        if not self._console.is_terminal and report.step % 50 == 0:
            self._console.print(
                f"step {report.step}/{report.steps} loss {report.loss:.4f} "
                f"{report.examples_per_second:.1f} ex/s dev {dev}",
                highlight=False,
            )


def command_line() -> list[str]:
    """The exact command, for generator.json (argv as given)."""
    return [Path(sys.argv[0]).name, *sys.argv[1:]]


def printable(command: list[str]) -> str:
    return shlex.join(command)


def print_result(console: Console, result: TrainingResult) -> None:
    """The run's last two lines: how far it got, and where the best generator is."""
    state = "finished" if result.finished else "stopped (run the same command to continue)"
    best = (
        "n/a"
        if result.best_dev_accuracy is None
        else f"{result.best_dev_accuracy:.4f} at step {result.best_step}"
    )
    rate = result.examples_seen / result.train_seconds if result.train_seconds else 0.0
    console.print(
        f"{state}: {result.steps} steps, {result.examples_seen} examples, {rate:.1f} examples/s",
        highlight=False,
    )
    console.print(f"best mean dev accuracy (z = 0): {best}; generator in {result.folder}", highlight=False)
