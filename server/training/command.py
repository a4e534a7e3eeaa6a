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

from cbpt.server.training.settings import TrainSettings
from cbpt.server.training.trainer import StepReport

_PLAIN = (int, float, str, bool)


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
