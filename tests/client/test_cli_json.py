"""``--version`` on both CLIs and ``--json`` documents of stable shape (the README's
"Machine-readable output")."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from cbpt.client.cli import app
from cbpt.common.version import __version__

runner = CliRunner()


def test_both_clis_print_their_version() -> None:
    assert runner.invoke(app, ["--version"]).output.strip() == f"cbpt {__version__}"
    server = subprocess.run(
        [sys.executable, "-m", "cbpt.server.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert server.stdout.strip() == f"cbpt-server {__version__}"


def test_info_json(server: str) -> None:
    result = runner.invoke(app, ["info", "--server", server, "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert list(document) == [
        "server",
        "model_id",
        "model_fingerprint",
        "hidden_size",
        "server_version",
        "adapters",
        "limits",
    ]
    assert document["server"] == server and document["model_id"] == "tiny-llama-0"
    assert {"name", "method", "dimension", "prompt_length", "placement"} <= set(document["adapters"][0])
    assert document["limits"]["max_text_tokens"] > 0
