"""The ``--version`` flag both command-line programs (``cbpt``, ``cbpt-server``) share."""

from __future__ import annotations

from typing import Any

import typer

from cbpt.common.version import __version__


def version_option(program: str) -> Any:
    """``--version`` for a typer callback: prints ``PROGRAM VERSION`` and exits before any command runs."""

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{program} {__version__}")
            raise typer.Exit()

    return typer.Option("--version", callback=show, is_eager=True, help="Print the version and exit.")
