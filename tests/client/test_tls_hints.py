"""A TLS mismatch says so and names the flag that fixes it (it used to read "unavailable: Socket closed")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cbpt.client.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def tls_server(engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(target, its CA, an unrelated CA)."""
    certs = pytest.importorskip("cbpt.server.front.certs")
    from cbpt.server.front.app import serve_in_background
    from cbpt.server.settings import ServerSettings

    folder = tmp_path_factory.mktemp("tls")
    own = certs.generate_dev_certificates(folder / "own", ["localhost", "127.0.0.1"])
    other = certs.generate_dev_certificates(folder / "other", ["localhost", "127.0.0.1"])
    settings = ServerSettings.from_flags(
        host="127.0.0.1",
        port=0,
        tls_cert=own.server_cert,
        tls_key=own.server_key,
        allow_no_auth=True,
        grace_seconds=1,
    )
    with serve_in_background(engine, settings) as target:
        yield target, own.ca_cert, other.ca_cert


def _error_line(*args: object) -> str:
    result = runner.invoke(app, [str(arg) for arg in args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_plaintext_against_a_tls_port_names_ca_cert(tls_server: tuple[str, Path, Path]) -> None:
    target, ca, _ = tls_server
    line = _error_line("info", "--server", target, "--retries", 0)
    assert "spoke plaintext" in line and "--ca-cert" in line
    assert runner.invoke(app, ["info", "--server", target, "--ca-cert", str(ca)]).exit_code == 0


def test_a_failed_handshake_names_ca_cert(tls_server: tuple[str, Path, Path]) -> None:
    target, _, other_ca = tls_server
    line = _error_line("info", "--server", target, "--ca-cert", other_ca, "--retries", 0)
    assert "TLS handshake failed" in line and "--ca-cert" in line


def test_tls_against_a_plaintext_server_names_insecure(
    server: str, tls_server: tuple[str, Path, Path]
) -> None:
    _, ca, _ = tls_server
    line = _error_line("info", "--server", server, "--ca-cert", ca, "--retries", 0)
    assert "does not answer TLS" in line and "--insecure" in line
