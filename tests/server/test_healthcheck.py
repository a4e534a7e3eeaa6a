"""docker/healthcheck.py against a real TLS server: 0 when SERVING, non-zero otherwise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cbpt.server.engine import ScoringEngine
from cbpt.server.front.app import BackgroundServer
from cbpt.server.front.certs import CertificatePaths
from cbpt.server.settings import ServerSettings
from tests.server.helpers import plain_settings

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "healthcheck.py"


def _probe():
    spec = importlib.util.spec_from_file_location("cbpt_healthcheck", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_healthcheck_over_tls(
    engine: ScoringEngine, certs: CertificatePaths, other_certs: CertificatePaths
) -> None:
    probe = _probe()
    settings = ServerSettings.from_flags(
        host="127.0.0.1", port=0, tls_cert=certs.server_cert, tls_key=certs.server_key, allow_no_auth=True
    )
    server = BackgroundServer(engine, settings)
    target = server.start()
    try:
        assert probe(["--target", target, "--ca", str(certs.ca_cert)]) == 0
        assert probe(["--target", target, "--ca", str(certs.ca_cert), "--service", ""]) == 0
        assert probe(["--target", target, "--ca", str(other_certs.ca_cert), "--timeout", "3"]) == 1
        assert probe(["--target", target, "--ca", str(certs.ca_cert), "--service", "nope.Service"]) == 1
    finally:
        server.stop(grace=0)
    assert probe(["--target", target, "--ca", str(certs.ca_cert), "--timeout", "1"]) == 1


def test_healthcheck_plaintext_for_local_development(engine: ScoringEngine) -> None:
    server = BackgroundServer(engine, plain_settings())
    target = server.start()
    try:
        assert _probe()(["--target", target, "--plaintext"]) == 0
    finally:
        server.stop(grace=0)
