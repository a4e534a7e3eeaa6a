"""#22 "Prove it": two tenants, end to end through gRPC on the tiny model, as API keys and as mTLS
client certificates. They never share cached states, budgets or fair shares, and nothing bob's
answers carry (scores, tokens_processed, refusal messages) depends on what alice sent. What is
*not* claimed: ``server_seconds`` and latency reflect the server's load (a timing channel inherent
to sharing one model; docs/security.md says so).
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from cbpt.common.wire import unpack_floats
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoringEngine
from cbpt.server.front.app import BackgroundServer
from cbpt.server.front.certs import CertificatePaths
from cbpt.server.front.keys import add_key
from cbpt.server.testing import tiny_bundle
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import (
    DIMENSION,
    TEST_LIMITS,
    CountingModel,
    Identity,
    call_fails,
    candidates,
    evaluate_request,
    mtls_settings,
    plain_settings,
    tls_channel,
)
from tests.server.test_scheduling import BIG, SMALL

KINDS = ["api-keys", "mtls"]
SECRET = "Review: alice's unreleased product is a disaster\nSentiment:"
SHARED = "Review: a gripping and moving film\nSentiment:"


@dataclass
class Tenant:
    stub: tuning_pb2_grpc.TuningStub
    metadata: tuple[tuple[str, str], ...] = ()

    def evaluate(self, request: tuning_pb2.EvaluateRequest) -> tuning_pb2.EvaluateResponse:
        return self.stub.Evaluate(request, metadata=self.metadata, timeout=60)

    def future(self, request: tuning_pb2.EvaluateRequest) -> Any:
        return self.stub.Evaluate.future(request, metadata=self.metadata, timeout=120)


@dataclass
class Deployment:
    server: BackgroundServer
    tenants: dict[str, Tenant]  # alice, bob, and alice again over a second connection
    scopes: dict[str, str]  # tenant name -> the scope (tenant id) the server keeps for it

    def metric(self, name: str) -> float:
        return self.metrics(name)[0]

    def metrics(self, *names: str) -> tuple[float, ...]:
        """The named gauges from one scrape, so that they describe one moment."""
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        lines = urllib.request.urlopen(url, timeout=10).read().decode().splitlines()
        return tuple(
            next(float(line.split()[-1]) for line in lines if line.startswith(name + " ")) for name in names
        )


@contextmanager
def deployment(
    kind: str,
    engine: ScoringEngine,
    tmp_path: Path,
    certs: CertificatePaths,
    people: dict[str, Identity],
    **settings: Any,
) -> Iterator[Deployment]:
    """A server whose tenants are alice and bob: API keys over plaintext loopback, or client certificates."""
    settings.setdefault("metrics_port", 0)
    if kind == "api-keys":
        keys = tmp_path / "keys.json"
        bearer = {name: (("authorization", f"Bearer {add_key(keys, name)}"),) for name in ("alice", "bob")}
        server = BackgroundServer(engine, plain_settings(api_keys_file=keys, allow_no_auth=False, **settings))
        scopes = {"alice": "alice", "bob": "bob"}
    else:
        server = BackgroundServer(engine, mtls_settings(certs, **settings))
        scopes = {"alice": "cert:alice", "bob": "cert:bob"}
    target = server.start()
    try:
        with ExitStack() as stack:

            def channel(who: str) -> grpc.Channel:
                if kind == "api-keys":
                    return stack.enter_context(grpc.insecure_channel(target))
                return stack.enter_context(
                    tls_channel(target, certs.ca_cert, people[who].cert, people[who].key)
                )

            tenants = {
                label: Tenant(
                    tuning_pb2_grpc.TuningStub(channel(who)), bearer[who] if kind == "api-keys" else ()
                )
                for label, who in (("alice", "alice"), ("bob", "bob"), ("alice-again", "alice"))
            }
            yield Deployment(server, tenants, scopes)
    finally:
        server.stop(grace=1.0)


def _fresh_engine() -> ScoringEngine:
    bundle = tiny_bundle(0)
    return ScoringEngine(
        bundle,
        ServedAdapters(bbt_dimension=DIMENSION, prompt_length=4, shipped_generators=False).build(bundle),
        TEST_LIMITS,
    )


def _answer(response: tuning_pb2.EvaluateResponse) -> tuple[np.ndarray, int, int, int]:
    """Everything bob reads but the timing: scores, tokens_processed and the shape fields."""
    scores = unpack_floats(response.log_probs, (len(response.log_probs) // 4,), "log_probs")
    return scores, response.tokens_processed, response.num_candidates, response.num_examples


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("adapter", ["bbt-cue", "bbt-suffix", "bbt"])
def test_bobs_answers_do_not_depend_on_alices_traffic(
    kind: str, adapter: str, tmp_path: Path, certs: CertificatePaths, people: dict[str, Identity]
) -> None:
    """Bob's answers (with score noise on, so its keying is covered too) are the same to the bit
    whether or not alice sent the very texts he sends, and her secret one, first."""
    protection = {"score_noise": 0.3, "score_noise_seed": 5}
    bobs = evaluate_request(
        candidates(2, seed=3), texts=[SHARED, SECRET], adapter=adapter, cue="\nSentiment:"
    )
    answers = []
    for alice_first in (False, True):
        engine = _fresh_engine()
        with deployment(kind, engine, tmp_path / str(alice_first), certs, people, **protection) as deployed:
            alice, bob = deployed.tenants["alice"], deployed.tenants["bob"]
            if alice_first:
                alice.evaluate(bobs)
                alice.evaluate(
                    evaluate_request(candidates(2, seed=9), texts=[SECRET], adapter=adapter, cue="\nA:")
                )
            answers.append(_answer(bob.evaluate(bobs)))
            again = _answer(bob.evaluate(bobs))  # bob's own repeat: same noise, his own cache
            cached = engine.text_states.entries_per_scope()
        np.testing.assert_array_equal(again[0], answers[-1][0])
        assert set(cached) <= {deployed.scopes["alice"], deployed.scopes["bob"]}
    (alone, tokens_alone, *shape_alone), (after, tokens_after, *shape_after) = answers
    np.testing.assert_array_equal(after, alone)
    assert tokens_after == tokens_alone and shape_after == shape_alone


@pytest.mark.parametrize("kind", KINDS)
def test_budgets_are_per_tenant(
    kind: str, tmp_path: Path, certs: CertificatePaths, people: dict[str, Identity]
) -> None:
    """Alice spending her whole daily budget leaves bob's untouched, and his refusal names only his usage."""
    call = evaluate_request(candidates(2))  # 2 candidates x 2 texts: 4 evaluations
    with deployment(kind, _fresh_engine(), tmp_path, certs, people, evaluations_per_day=8) as deployed:
        alice, bob = deployed.tenants["alice"], deployed.tenants["bob"]
        alice.evaluate(call)
        deployed.tenants["alice-again"].evaluate(call)  # a second connection is the same tenant
        refused = call_fails(alice.stub.Evaluate, call, metadata=alice.metadata)
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert bob.evaluate(call).num_candidates == 2 and bob.evaluate(call).num_candidates == 2
        bobs_refusal = call_fails(bob.stub.Evaluate, call, metadata=bob.metadata)
    assert bobs_refusal.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert deployed.scopes["bob"] in bobs_refusal.message and "used 8 of its 8" in bobs_refusal.message
    assert deployed.scopes["alice"] not in bobs_refusal.message


def _until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server never reached the expected state"
        time.sleep(0.01)


@pytest.mark.parametrize(
    "passes", [0.1], indirect=True
)  # alice's first call outlasts a loaded machine's delays
@pytest.mark.parametrize("kind", KINDS)
def test_fair_shares_are_per_tenant_not_per_connection(
    kind: str,
    slow_engine: ScoringEngine,
    passes: CountingModel,
    tmp_path: Path,
    certs: CertificatePaths,
    people: dict[str, Identity],
) -> None:
    """Alice's two large calls over two connections are one tenant's: one job runs, the other waits
    for it (a second connection buys no second share); bob's small call is interleaved and finishes
    while alice's first is still running."""
    with deployment(kind, slow_engine, tmp_path, certs, people, merge_window_ms=0) as deployed:
        alice, again, bob = (deployed.tenants[name] for name in ("alice", "alice-again", "bob"))
        started = passes.count
        first = alice.future(BIG)
        passes.wait_for(started + 3)
        second = again.future(BIG)
        # One scrape at a time (two reads could straddle a turn): one job runs, the other waits.
        _until(lambda: deployed.metrics("cbpt_running_jobs", "cbpt_queue_depth") == (1, 1))
        assert bob.evaluate(SMALL).num_candidates == 1
        assert not first.done(), "bob's call waited for alice's to finish"
        first.cancel()
        second.cancel()
