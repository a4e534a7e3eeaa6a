"""``cbpt-server train-generator DOMAIN_FILE --out FOLDER``: every TrainSettings field is an option.

The options are derived from ``TrainSettings`` (one declaration; pydantic validates them), the
model options are the server's own, and a run is resumed by giving the same command again.
"""

from __future__ import annotations

import inspect
import shlex
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cbpt.server.errors import ConfigError
from cbpt.server.training.settings import TrainSettings

if typing.TYPE_CHECKING:
    import torch

    from cbpt.server.training.trainer import StepReport, TrainingResult

_PLAIN = (int, float, str, bool)

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
    import torch

    return None if name == "auto" else getattr(torch, name)


def _option_type(annotation: Any) -> Any:
    """The CLI type of a settings field: Literal and Enum values are given as strings."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if annotation in _PLAIN:
        return annotation
    if len(args) == 1 and args[0] in _PLAIN:
        return args[0]
    return str


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Append one ``--option`` per TrainSettings field to ``command``, collected into ``settings``."""
    own = inspect.signature(command)
    extra = []
    for name, field in TrainSettings.model_fields.items():
        kind = _option_type(field.annotation)
        help_text = field.description or ""
        default = (
            f" (default {getattr(field.default, 'value', field.default)})"
            if field.default is not None
            else ""
        )
        option = typer.Option(f"--{name.replace('_', '-')}", help=f"{help_text}{default}", show_default=False)
        extra.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
            )
        )
    parameters = [p for p in own.parameters.values() if p.name != "settings"]

    def wrapper(**kwargs: Any) -> Any:
        given = {
            name: kwargs.pop(name) for name in TrainSettings.model_fields if kwargs.get(name) is not None
        }
        for name in TrainSettings.model_fields:
            kwargs.pop(name, None)
        try:
            settings = TrainSettings(**given)
        except ValidationError as error:
            first = error.errors()[0]
            raise typer.BadParameter(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
        return command(settings=settings, **kwargs)

    wrapper.__signature__ = own.replace(parameters=parameters + extra)  # type: ignore[attr-defined]
    wrapper.__doc__ = command.__doc__
    wrapper.__name__ = command.__name__
    return wrapper


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
                f"step {report.step}/{report.steps} loss {report.loss:.4f} {report.examples_per_second:.1f} ex/s dev {dev}",
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
