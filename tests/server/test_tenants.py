"""Tenants: every API key and every mTLS client certificate is one, with its own caches, budgets
and limits, and nothing in an answer reveals another tenant's traffic."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import pytest

from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoringEngine
from cbpt.server.errors import ConfigError
from cbpt.server.front.app import serve_in_background
from cbpt.server.front.certs import CertificatePaths
from cbpt.server.front.keys import add_certificate, add_key
from cbpt.server.testing import tiny_bundle
from cbpt.v1 import tuning_pb2_grpc
from tests.server.helpers import (
    DIMENSION,
    TEST_LIMITS,
    Identity,
    call_fails,
    evaluate_request,
    mtls_settings,
    plain_settings,
    tls_channel,
)

CUE = "\nSentiment:"


@pytest.fixture
def engine() -> ScoringEngine:
    """A fresh engine per test (an empty text-state cache), serving the before-cue adapter that caches."""
    bundle = tiny_bundle(0)
    return ScoringEngine(
        bundle,
        ServedAdapters(bbt_dimension=DIMENSION, prompt_length=4, shipped_generators=False).build(bundle),
        TEST_LIMITS,
    )


@contextmanager
def stubs(
    target: str, certs: CertificatePaths, people: dict[str, Identity]
) -> Iterator[dict[str, tuning_pb2_grpc.TuningStub]]:
    with ExitStack() as stack:
        yield {
            name: tuning_pb2_grpc.TuningStub(
                stack.enter_context(tls_channel(target, certs.ca_cert, who.cert, who.key))
            )
            for name, who in people.items()
        }


def cue_request(**fields: object):
    return evaluate_request(adapter="bbt-cue", cue=CUE, **fields)


def test_each_client_certificate_has_its_own_text_state_cache(
    engine: ScoringEngine, certs: CertificatePaths, people: dict[str, Identity]
) -> None:
    """mTLS alone: bob sending the text alice sent pays the full cost, so tokens_processed (and
    timing) cannot tell him she sent it; alice's own repeat still reuses her states."""
    with serve_in_background(engine, mtls_settings(certs)) as target, stubs(target, certs, people) as stub:
        first = stub["alice"].Evaluate(cue_request(), timeout=30)
        bobs = stub["bob"].Evaluate(cue_request(), timeout=30)
        again = stub["alice"].Evaluate(cue_request(), timeout=30)
    assert bobs.tokens_processed == first.tokens_processed
    assert again.tokens_processed < first.tokens_processed
    assert engine.text_states.entries_per_scope() == {"cert:alice": 2, "cert:bob": 2}


def test_each_client_certificate_has_its_own_budget(
    engine: ScoringEngine, certs: CertificatePaths, people: dict[str, Identity]
) -> None:
    settings = mtls_settings(certs, evaluations_per_day=4)  # one call of 2 candidates x 2 texts
    with serve_in_background(engine, settings) as target, stubs(target, certs, people) as stub:
        stub["alice"].Evaluate(cue_request(), timeout=30)
        refused = call_fails(stub["alice"].Evaluate, cue_request())
        stub["bob"].Evaluate(cue_request(), timeout=30)  # bob's budget is his own
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'cert:alice'" in refused.message


def test_a_keys_file_entry_can_name_a_certificate_with_its_own_limits(
    engine: ScoringEngine, certs: CertificatePaths, people: dict[str, Identity], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    add_certificate(keys, "alice-lab", "alice", evaluations_per_day=4)
    settings = mtls_settings(certs, api_keys_file=keys)
    with serve_in_background(engine, settings) as target, stubs(target, certs, people) as stub:
        stub["alice"].Evaluate(cue_request(), timeout=30)  # no bearer key: the certificate is the tenant
        spent = call_fails(stub["alice"].Evaluate, cue_request())
        stranger = call_fails(stub["bob"].Evaluate, cue_request())  # no entry and no key
    assert spent.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "'alice-lab'" in spent.message
    assert stranger.code == grpc.StatusCode.UNAUTHENTICATED
    assert engine.text_states.entries_per_scope() == {"alice-lab": 2}


def test_a_key_bound_to_a_certificate_works_only_with_it(
    engine: ScoringEngine, certs: CertificatePaths, people: dict[str, Identity], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    secret = add_key(keys, "alice", certificate="alice")
    metadata = (("authorization", f"Bearer {secret}"),)
    settings = mtls_settings(certs, api_keys_file=keys)
    with serve_in_background(engine, settings) as target, stubs(target, certs, people) as stub:
        assert stub["alice"].Evaluate(cue_request(), timeout=30, metadata=metadata).num_candidates == 2
        stolen = call_fails(stub["bob"].Evaluate, cue_request(), metadata=metadata)
    assert stolen.code == grpc.StatusCode.UNAUTHENTICATED and "its client certificate" in stolen.message


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("evaluations_per_day", 1),
        ("evaluations_total", 5),
        ("requests_per_minute", 10),
        ("max_concurrent_per_key", 1),
        ("usage_file", Path("usage.json")),
    ],
)
def test_tenant_limits_without_tenants_are_refused(flag: str, value: object) -> None:
    """Without keys or mTLS there is no tenant to limit: the flag would be ignored, so it is refused."""
    with pytest.raises(ConfigError, match=f"--{flag.replace('_', '-')}"):
        plain_settings(**{flag: value}).check_serving()
