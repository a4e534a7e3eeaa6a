"""Where the key for checkpoints and sealed vectors comes from: a passphrase or a key file.

Declared once for ``tune``, ``evaluate`` and ``predict``; the passphrase, like the API key,
is read from a flag or the environment and never echoed.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cbpt.client.files.crypto import KeySpec, SecretKey
from cbpt.common.cli import Command, R, settings_options


class KeySource(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    passphrase: str | None = Field(
        None,
        description="Encrypt checkpoints/vectors with a passphrase.",
        json_schema_extra={"envvar": "CBPT_PASSPHRASE"},
        repr=False,  # a secret
    )
    key_file: Path | None = Field(
        None,
        description="32-byte key file (default: ~/.config/cbpt/checkpoint.key).",
        json_schema_extra={"envvar": "CBPT_KEY_FILE"},
    )

    def key(self) -> KeySpec:
        return SecretKey.from_passphrase(self.passphrase) if self.passphrase else self.key_file


def key_options(command: Command[R]) -> Command[R]:
    """Give a command --passphrase and --key-file as one ``keys`` object."""
    return settings_options("keys", KeySource, KeySource)(command)
