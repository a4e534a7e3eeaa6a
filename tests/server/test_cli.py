"""``cbpt-server``: one-line errors, certificates, keys, info, convert-model, and serve end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from typer.testing import CliRunner

from cbpt.server.cli import app
from cbpt.server.front.keys import hash_key
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model saved as a local folder: a real ``--model`` for the CLI."""
    from cbpt.server.testing import tiny_bundle

    folder = tmp_path_factory.mktemp("model")
    bundle = tiny_bundle()
    bundle.model.save_pretrained(folder)
    bundle.tokenizer.save_pretrained(folder)
    return folder


def _one_line_error(args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    output = result.output.strip()
    assert "Traceback" not in output and "\n" not in output, output
    assert output.startswith("error: ") and expected in output, output


def test_bad_configuration_is_one_line(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    _one_line_error(["serve", "--allow-no-auth", "--tls-cert", missing, "--tls-key", missing], "missing.pem")
    _one_line_error(["serve", "--insecure", "--api-keys-file", str(tmp_path / "keys.json")], "keys.json")
    (tmp_path / "bad.json").write_text("{not json")
    _one_line_error(["serve", "--insecure", "--api-keys-file", str(tmp_path / "bad.json")], "not valid JSON")
    _one_line_error(["serve"], "TLS is off")
    _one_line_error(["serve", "--insecure", "--host", "0.0.0.0"], "loopback")
    certs = ["--tls-cert", missing, "--tls-key", missing]
    _one_line_error(["serve", "--host", "0.0.0.0", *certs], "no --api-keys-file")  # finding 3
    _one_line_error(["serve", "--host", "0.0.0.0", "--allow-no-auth", *certs], "only on a loopback host")
    _one_line_error(["serve", "--port", "70000"], "--port")
    _one_line_error(["info", "--model", str(tmp_path / "no-model")], "could not be loaded")


def test_gen_certs(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = runner.invoke(app, ["gen-certs", "--out", str(out), "--hosts", "localhost,10.1.2.3", "--client"])
    assert result.exit_code == 0, result.output
    for key in (tmp_path / "certs-ca-key.pem", out / "server-key.pem", out / "client-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # Finding 10: the CA key was written into the folder a deployment mounts as secrets.
    assert sorted(p.name for p in out.iterdir()) == [
        "ca.pem",
        "client-key.pem",
        "client.pem",
        "server-key.pem",
        "server.pem",
    ]
    _one_line_error(
        ["gen-certs", "--out", str(tmp_path / "c2"), "--ca-key", str(tmp_path / "c2" / "k.pem")],
        "keep the CA key out",
    )
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    _one_line_error(["gen-certs", "--out", str(out)], "--force")


def test_client_cert_issues_a_tenant_certificate_from_the_dev_ca(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert runner.invoke(app, ["gen-certs", "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["client-cert", "alice", "--out", str(out)])
    assert result.exit_code == 0, result.output
    cert = x509.load_pem_x509_certificate((out / "alice.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=alice"
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    assert cert.issuer == ca.subject and stat.S_IMODE((out / "alice-key.pem").stat().st_mode) == 0o600
    _one_line_error(["client-cert", "alice", "--out", str(out)], "--force")
    _one_line_error(["client-cert", "alice smith", "--out", str(out)], "client name")


def test_add_key_prints_the_key_once(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    result = runner.invoke(app, ["add-key", "alice", "--keys-file", str(keys), "--requests-per-minute", "60"])
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert re.fullmatch(r"cbpt_[A-Za-z0-9_\-]{40,}", key)
    stored = json.loads(keys.read_text())["keys"]
    assert stored == [{"id": "alice", "sha256": hash_key(key), "requests_per_minute": 60}]
    _one_line_error(["add-key", "alice", "--keys-file", str(keys)], "already exists")


def test_add_key_for_a_client_certificate_prints_no_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    args = ["add-key", "alice", "--keys-file", str(keys), "--certificate", "alice.example"]
    result = runner.invoke(app, [*args, "--evaluations-per-day", "50"])
    assert result.exit_code == 0, result.output
    assert "cbpt_" not in result.output and "alice.example" in result.output
    stored = json.loads(keys.read_text())["keys"]
    assert stored == [{"id": "alice", "certificate": "alice.example", "evaluations_per_day": 50}]
    _one_line_error(["add-key", "bob", *args[2:]], "already has an entry")


def test_info_and_convert_model(model_dir: Path) -> None:
    result = runner.invoke(
        app, ["info", "--model", str(model_dir), "--bbt-dimension", "8", "--prompt-length", "2"]
    )
    assert result.exit_code == 0, result.output
    assert str(model_dir) in result.output and "fingerprint" in result.output
    assert re.search(r"bbt\s+│\s+bbt\s+│\s+8\s+│\s+2", result.output), result.output
    result = runner.invoke(app, ["convert-model", "--model", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert "cached" in result.output


def test_serve_end_to_end_and_stop_on_sigterm(model_dir: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "cbpt.server.cli", "serve", "--model", str(model_dir), "--insecure"]
    command += ["--allow-no-auth"]
    command += [
        "--port",
        "0",
        "--bbt-dimension",
        "8",
        "--prompt-length",
        "2",
        "--log-json",
        "--grace-seconds",
        "5",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBPT_")}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    lines: list[str] = []
    try:
        address = _serving_address(process, lines)
        with grpc.insecure_channel(address) as channel:
            info = tuning_pb2_grpc.TuningStub(channel).GetServerInfo(
                tuning_pb2.GetServerInfoRequest(), timeout=20
            )
        dimensions = {a.name: a.dimension for a in info.adapters}
        assert (dimensions["none"], dimensions["bbt"]) == (0, 8)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    lines += process.stderr.read().splitlines()  # type: ignore[union-attr]
    messages = [json.loads(line)["message"] for line in lines if line.startswith("{")]
    assert "serving" in messages and "shutting down" in messages
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


def _serving_address(process: subprocess.Popen, lines: list[str]) -> str:
    deadline = time.monotonic() + 60
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"server exited early: {lines}")
        lines.append(line)
        if line.startswith("{") and json.loads(line)["message"] == "serving":
            return json.loads(line)["address"]
    raise AssertionError("server did not report its address in time")


def test_add_key_with_a_budget_and_an_expiry(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    args = ["add-key", "bob", "--keys-file", str(keys), "--evaluations-per-day", "100"]
    result = runner.invoke(app, [*args, "--evaluations-total", "1000", "--expires", "2027-01-31"])
    assert result.exit_code == 0, result.output
    (stored,) = json.loads(keys.read_text())["keys"]
    assert (stored["evaluations_per_day"], stored["evaluations_total"]) == (100, 1000)
    assert stored["expires"] == "2027-01-31T00:00:00Z"
    _one_line_error(["add-key", "carol", "--keys-file", str(keys), "--expires", "soon"], "--expires 'soon'")


def test_every_setting_is_a_serve_flag() -> None:
    """Each setting is a flag of its own name (tests/server/test_settings.py: also a CBPT_* variable and
    a settings-file key); the commands that load the model take the sections they use."""
    import inspect

    from cbpt.common.cli import leaves
    from cbpt.server.cli import convert_model, info, serve
    from cbpt.server.settings import ServerSettings

    flags = set(inspect.signature(serve).parameters)
    assert set(leaves(ServerSettings)) - flags == {"specs"}  # adapter specs: settings file only
    assert {"model", "device", "batch_tokens", "bbt_dimension", "generators"} <= set(
        inspect.signature(info).parameters
    )
    assert set(inspect.signature(convert_model).parameters) == {
        "config",
        "model",
        "model_cache_dir",
        "device",
        "threads",
    }


def test_a_bad_setting_is_one_line_naming_its_flag(tmp_path: Path) -> None:
    _one_line_error(["serve", "--insecure", "--allow-no-auth", "--max-candidates", "0"], "--max-candidates:")
    config = tmp_path / "server.yaml"
    config.write_text("adapters: {specs: [{method: bbt, placement: sideways}]}\n")
    _one_line_error(["serve", "--config", str(config)], "adapters.specs.0.placement:")
