"""TLS, mTLS and the refusal of unsafe plaintext."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cbpt.server.engine import ScoringEngine
from cbpt.server.errors import ConfigError
from cbpt.server.front.app import BackgroundServer, serve_in_background
from cbpt.server.front.certs import CertificatePaths
from cbpt.server.front.keys import add_key
from cbpt.server.settings import ServerSettings
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import call_fails, evaluate_request, plain_settings, tls_channel

INFO = tuning_pb2.GetServerInfoRequest()


def tls_settings(certs: CertificatePaths, **overrides: object) -> ServerSettings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "tls_cert": certs.server_cert,
        "tls_key": certs.server_key,
        "allow_no_auth": True,
    }
    values.update(overrides)
    return ServerSettings.from_flags(**values)


@pytest.fixture(scope="module")
def tls_target(engine: ScoringEngine, certs: CertificatePaths) -> Iterator[str]:
    with serve_in_background(engine, tls_settings(certs)) as address:
        yield address


@pytest.fixture(scope="module")
def mtls_target(engine: ScoringEngine, certs: CertificatePaths) -> Iterator[str]:
    with serve_in_background(engine, tls_settings(certs, client_ca=certs.ca_cert)) as address:
        yield address


def test_tls_accepts_a_client_trusting_the_ca(tls_target: str, certs: CertificatePaths) -> None:
    port = tls_target.rsplit(":", 1)[1]
    for address in (tls_target, f"localhost:{port}"):  # IP and DNS subject alternative names
        with tls_channel(address, certs.ca_cert) as channel:
            stub = tuning_pb2_grpc.TuningStub(channel)
            assert stub.GetServerInfo(INFO, timeout=20).model_id
            assert stub.Evaluate(evaluate_request(), timeout=20).num_candidates == 2


def test_tls_refused_by_a_client_trusting_another_ca(tls_target: str, other_certs: CertificatePaths) -> None:
    with tls_channel(tls_target, other_certs.ca_cert) as channel:
        failed = call_fails(tuning_pb2_grpc.TuningStub(channel).GetServerInfo, INFO)
    assert failed.code == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_target: str) -> None:
    with grpc.insecure_channel(tls_target) as channel:
        failed = call_fails(tuning_pb2_grpc.TuningStub(channel).GetServerInfo, INFO)
    assert failed.code == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_client_without_certificate(mtls_target: str, certs: CertificatePaths) -> None:
    with tls_channel(mtls_target, certs.ca_cert) as channel:
        failed = call_fails(tuning_pb2_grpc.TuningStub(channel).GetServerInfo, INFO)
    assert failed.code == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_certificate_from_another_ca(
    mtls_target: str, certs: CertificatePaths, other_certs: CertificatePaths
) -> None:
    assert other_certs.client_cert and other_certs.client_key
    with tls_channel(mtls_target, certs.ca_cert, other_certs.client_cert, other_certs.client_key) as channel:
        failed = call_fails(tuning_pb2_grpc.TuningStub(channel).GetServerInfo, INFO)
    assert failed.code == grpc.StatusCode.UNAVAILABLE


def test_mtls_accepts_a_client_certificate(mtls_target: str, certs: CertificatePaths) -> None:
    assert certs.client_cert and certs.client_key
    with tls_channel(mtls_target, certs.ca_cert, certs.client_cert, certs.client_key) as channel:
        assert tuning_pb2_grpc.TuningStub(channel).GetServerInfo(INFO, timeout=20).model_id


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (lambda c: ServerSettings.from_flags(port=0), "TLS is off"),
        (
            lambda c: ServerSettings.from_flags(port=0, api_keys_file=c.ca_cert),
            "API keys would travel in plaintext",
        ),
        (lambda c: ServerSettings.from_flags(host="0.0.0.0", port=0, insecure=True), "loopback"),
        (
            lambda c: ServerSettings.from_flags(port=0, tls_cert=c.server_cert),
            "both --tls-cert and --tls-key",
        ),
        (lambda c: ServerSettings.from_flags(port=0, insecure=True, client_ca=c.ca_cert), "mTLS"),
        (lambda c: tls_settings(c, tls_key=c.server_cert.parent / "missing.pem"), "missing.pem"),
        # Finding 3: TLS on every interface with no keys file answered anyone (only "auth=False" said so).
        (lambda c: tls_settings(c, host="0.0.0.0", allow_no_auth=False), "no --api-keys-file"),
        (lambda c: tls_settings(c, allow_no_auth=False), "pass --allow-no-auth"),
        (lambda c: tls_settings(c, host="0.0.0.0"), "--allow-no-auth serves without API keys"),
        (lambda c: tls_settings(c, host="::"), "only on a loopback host, not '::'"),
        (lambda c: ServerSettings.from_flags(port=0, insecure=True), "no --api-keys-file"),
    ],
)
def test_unsafe_or_broken_transport_is_refused(
    engine: ScoringEngine, certs: CertificatePaths, settings, message
):
    with pytest.raises(ConfigError, match=message):
        BackgroundServer(engine, settings(certs)).start()


def test_plaintext_on_loopback_needs_insecure(engine: ScoringEngine) -> None:
    with serve_in_background(engine, plain_settings(host="localhost")) as address:
        assert address.startswith("localhost:")
        with grpc.insecure_channel(address) as channel:
            assert tuning_pb2_grpc.TuningStub(channel).GetServerInfo(INFO, timeout=20).model_id


def test_port_in_use_is_a_clear_error(engine: ScoringEngine, target: str) -> None:
    port = int(target.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
        BackgroundServer(engine, plain_settings(port=port)).start()


def test_tls_with_api_keys(engine: ScoringEngine, certs: CertificatePaths, tmp_path: Path) -> None:
    key = add_key(tmp_path / "keys.json", "alice")
    settings = tls_settings(certs, api_keys_file=tmp_path / "keys.json")
    with serve_in_background(engine, settings) as address, tls_channel(address, certs.ca_cert) as channel:
        stub = tuning_pb2_grpc.TuningStub(channel)
        assert stub.GetServerInfo(INFO, metadata=[("authorization", f"Bearer {key}")], timeout=20).model_id
        assert call_fails(stub.GetServerInfo, INFO).code == grpc.StatusCode.UNAUTHENTICATED


def test_beyond_loopback_needs_tls_and_keys_or_mtls(certs: CertificatePaths) -> None:
    """Listening on other interfaces: TLS always, and API keys or client certificates."""
    keys = certs.ca_cert  # any readable file stands for a keys file here: only the settings are checked
    tls_settings(certs, host="0.0.0.0", allow_no_auth=False, api_keys_file=keys).check_serving()
    tls_settings(certs, host="0.0.0.0", allow_no_auth=False, client_ca=certs.ca_cert).check_serving()
    with pytest.raises(ConfigError, match="loopback"):
        ServerSettings.from_flags(host="10.0.0.5", port=0, insecure=True, api_keys_file=keys).check_serving()
