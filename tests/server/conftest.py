"""Fixtures for the server tests: one tiny real engine and a loopback server per module."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from cbpt.server.engine import ScoringEngine
from cbpt.server.front.app import serve_in_background
from cbpt.server.front.certs import CertificatePaths, generate_dev_certificates, issue_client_certificate
from cbpt.server.testing import tiny_engine
from cbpt.v1 import tuning_pb2_grpc
from tests.server.helpers import DIMENSION, TEST_LIMITS, CountingModel, Identity, plain_settings
from tests.server.tiny_server import LIMITS


@pytest.fixture(scope="session")
def engine() -> ScoringEngine:
    return tiny_engine(limits=TEST_LIMITS, bbt_dimension=DIMENSION)


@pytest.fixture(scope="module")
def target(engine: ScoringEngine) -> Iterator[str]:
    with serve_in_background(engine, plain_settings()) as address:
        yield address


@pytest.fixture(scope="module")
def channel(target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target) as chan:
        yield chan


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> tuning_pb2_grpc.TuningStub:
    return tuning_pb2_grpc.TuningStub(channel)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    return generate_dev_certificates(
        tmp_path_factory.mktemp("certs"), ["localhost", "127.0.0.1"], client=True
    )


@pytest.fixture(scope="session")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> CertificatePaths:
    """A second, unrelated CA: a client trusting only it must refuse the server."""
    return generate_dev_certificates(
        tmp_path_factory.mktemp("other"), ["localhost", "127.0.0.1"], client=True
    )


@pytest.fixture(scope="session")
def people(certs: CertificatePaths, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    """Client certificates for alice and bob from the ``certs`` CA: two tenants under mTLS."""
    out = tmp_path_factory.mktemp("people")
    return {
        name: Identity(*issue_client_certificate(certs.ca_cert, certs.ca_key, name, out))
        for name in ("alice", "bob")
    }


@pytest.fixture(scope="module")
def slow_engine() -> ScoringEngine:
    """An engine that runs one sequence a pass, so a call takes many passes the scheduler can interleave."""
    return tiny_engine(limits=LIMITS, bbt_dimension=16, with_cbp=False, batch_sequences=1)


@pytest.fixture
def passes(slow_engine: ScoringEngine, request: pytest.FixtureRequest) -> Iterator[CountingModel]:
    """Counts ``slow_engine``'s passes, each made to take 0.02 s (or the seconds given by indirect
    parametrisation: long enough that a state the test waits for outlasts a loaded machine's delays)."""
    counter = CountingModel(slow_engine, seconds=getattr(request, "param", 0.02))
    yield counter
    counter.remove()
