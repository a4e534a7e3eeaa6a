"""The ``cbpt`` application and how it fails: one line on stderr, and an exit code that says whose fix it is.

Every failure the user can fix prints ONE line and exits 1 (server, key,
checkpoint) or 2 (task file, data, settings); tracebacks are for bugs only.
Secrets (API key, passphrase) come from flags or the environment and are never
echoed, not even in the resume command printed after Ctrl-C (which exits 130).
"""

from __future__ import annotations

import functools
import json
import math
from typing import Annotated, Any, NoReturn

import typer

from cbpt.client.errors import ArtifactError, ConfigError, TaskError
from cbpt.common.cli import Command, R, version_option
from cbpt.common.errors import CbptError

app = typer.Typer(
    name="cbpt",
    help="Privacy-preserving black-box prompt tuning: labels and losses never leave this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals would include API keys and passphrases
)

USAGE_ERRORS = (TaskError, ConfigError, ArtifactError)  # exit 2: the input needs fixing
EXIT_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 1, 130, 143

# ``--json``: one JSON document on stdout (shapes in the README, "Machine-readable output"), no
# progress bar, no table. Declared once here and given to every command.
JsonOutput = Annotated[bool, typer.Option("--json", help="Print one JSON document (see the README).")]


@app.callback()
def _main(version: Annotated[bool, version_option("cbpt")] = False) -> None:
    """Privacy-preserving black-box prompt tuning: labels and losses never leave this machine."""


def print_json(document: object) -> None:
    """The one way a command prints its ``--json`` document: one line of strict JSON (NaN/inf as null)."""
    typer.echo(json.dumps(_finite(document), allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def fail(message: object, code: int) -> NoReturn:
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def friendly_errors(command: Command[R]) -> Command[R]:
    """Turn expected errors into one line on stderr and an exit code (2: fix your input, 1: the rest)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        try:
            return command(*args, **kwargs)
        except USAGE_ERRORS as error:
            fail(error, EXIT_INPUT)
        except CbptError as error:  # client errors, and the task format's (common)
            fail(error, EXIT_FAILURE)

    return wrapper
