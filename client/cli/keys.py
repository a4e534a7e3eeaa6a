"""Where the key for checkpoints and sealed vectors comes from: a passphrase or a key file.

Declared once for ``tune``, ``evaluate`` and ``predict``; the passphrase, like the API key,
is read from a flag or the environment and never echoed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from cbpt.client.cli.options import Command, R, dataclass_options, option_group
from cbpt.client.files.crypto import KeySpec, SecretKey


@dataclass(frozen=True)
class KeySource:
    passphrase: Annotated[
        str | None,
        typer.Option(
            "--passphrase",
            envvar="CBPT_PASSPHRASE",
            help="Encrypt checkpoints/vectors with a passphrase.",
            show_default=False,
        ),
    ] = None
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file",
            envvar="CBPT_KEY_FILE",
            help="32-byte key file [default: ~/.config/cbpt/checkpoint.key].",
        ),
    ] = None

    def key(self) -> KeySpec:
        return SecretKey.from_passphrase(self.passphrase) if self.passphrase else self.key_file


def key_options(command: Command[R]) -> Command[R]:
    """Give a command --passphrase and --key-file as one ``keys`` object."""
    return option_group("keys", KeySource, dataclass_options(KeySource))(command)
