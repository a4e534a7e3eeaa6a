"""TuningClient against real loopback servers on a tiny model: scoring, splitting, errors, retries, TLS."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from cbpt.client.errors import AuthError, ClientError, QuotaExceeded, RequestRejected, ServerUnavailable
from cbpt.client.rpc.sdk import TuningClient
from cbpt.common.net import free_port, is_loopback_target

TEXTS = [
    f"Review: {word} film number {i}\nSentiment:" for i, word in enumerate(["great", "dull", "fine"] * 4)
]
CHOICES = [" positive", " negative"]


def _population(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 16)).astype(np.float32)


def test_info_mirrors_the_server(client: TuningClient) -> None:
    info = client.info()
    assert {a.name: a.dimension for a in info.adapters} == {"none": 0, "bbt": 16, "cbp": 16}
    assert len(info.model_fingerprint) == 64 and info.limits.max_candidates == 64
    assert client.info() is info  # cached


def test_evaluate_shapes_and_normalisation(client: TuningClient) -> None:
    log_probs = client.evaluate("bbt", _population(5), TEXTS, CHOICES)
    assert log_probs.shape == (5, 12, 2) and log_probs.dtype == np.float32
    np.testing.assert_allclose(np.exp(log_probs).sum(axis=-1), 1.0, atol=1e-5)
    single = client.predict("bbt", _population(5)[3], TEXTS, CHOICES)
    np.testing.assert_allclose(single, log_probs[3], atol=1e-5)
    zero_shot = client.predict("none", np.zeros(0), TEXTS, CHOICES)
    assert zero_shot.shape == (12, 2)
    assert (
        client.stats.calls == 4 and client.stats.bytes_sent > 5 * 16 * 4 and client.stats.tokens_processed > 0
    )


def test_per_example_choices_are_padded(client: TuningClient) -> None:
    choices = [[" a", " b"], [" yes", " no", " maybe"], [" x"]]
    log_probs = client.evaluate("bbt", _population(2), TEXTS[:3], choices)
    assert log_probs.shape == (2, 3, 3)
    assert np.isneginf(log_probs[:, 0, 2]).all() and np.isneginf(log_probs[:, 2, 1:]).all()
    np.testing.assert_allclose(log_probs[:, 2, 0], 0.0, atol=1e-6)


def test_splitting_to_server_limits_matches_one_call(client: TuningClient, limited_server: str) -> None:
    population = _population(7)
    whole = client.evaluate("bbt", population, TEXTS, CHOICES)
    with TuningClient(limited_server, max_retries=0) as limited:
        assert limited.info().model_fingerprint == client.info().model_fingerprint
        split = limited.evaluate("bbt", population, TEXTS, CHOICES)
        assert limited.stats.calls - 1 >= 9  # 7 candidates x 12 examples within 3 / 5 / 12 sequences
    np.testing.assert_allclose(split, whole, atol=1e-5)


def test_rejections_name_the_field_in_the_callers_indices(limited_server: str) -> None:
    population = _population(7)
    population[5, 2] = np.nan
    with TuningClient(limited_server, max_retries=0) as limited:
        with pytest.raises(RequestRejected) as caught:
            limited.evaluate("bbt", population, TEXTS, CHOICES)
        assert caught.value.fields == ("candidates[5]",)  # chunk-local index 2 of the second chunk
        long_texts = [*TEXTS[:7], "Review: " + "very " * 40 + "\nSentiment:"]
        with pytest.raises(RequestRejected, match=r"texts\[7\]: .*exceed"):
            limited.evaluate("bbt", _population(2), long_texts, CHOICES)
        with pytest.raises(RequestRejected, match="unknown adapter 'bbtx'; known: none, bbt, cbp"):
            limited.evaluate("bbtx", _population(2), TEXTS, CHOICES)
        with pytest.raises(RequestRejected, match=r"candidates: shape \(2, 15\)"):
            limited.evaluate("bbt", _population(2)[:, :15], TEXTS, CHOICES)


def test_unreachable_server_fails_after_retries() -> None:
    waits: list[float] = []
    client = TuningClient(f"127.0.0.1:{free_port()}", max_retries=3, timeout=5, sleep=waits.append)
    with client, pytest.raises(ServerUnavailable, match="unavailable"):
        client.info()
    assert len(waits) == 3 and waits[0] < waits[2] <= 10  # exponential backoff with jitter
    assert isinstance(ServerUnavailable("x"), ConnectionError)


def test_retry_succeeds_once_the_server_is_up(engine) -> None:
    from cbpt.server.front.app import BackgroundServer
    from cbpt.server.settings import ServerSettings

    port = free_port()
    late = BackgroundServer(
        engine,
        ServerSettings.from_flags(
            host="127.0.0.1", port=port, insecure=True, allow_no_auth=True, grace_seconds=1
        ),
    )
    waits: list[float] = []

    def start_server_then_wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 1:
            late.start()
        time.sleep(seconds)

    try:
        client = TuningClient(
            f"127.0.0.1:{port}", max_retries=6, backoff_base=0.1, sleep=start_server_then_wait
        )
        with client:
            assert client.info().model_id
            assert client.stats.retries == len(waits) >= 1
    finally:
        late.stop(grace=0)


def test_api_keys(auth_server: tuple[str, str, str]) -> None:
    target, good, _ = auth_server
    with TuningClient(target, api_key=good) as client:
        assert client.info().model_id
    for key in (None, "cbpt_wrong"):
        with (
            TuningClient(target, api_key=key) as client,
            pytest.raises(AuthError, match="refused the API key"),
        ):
            client.info()


def test_quota_honours_retry_info(auth_server: tuple[str, str, str]) -> None:
    target, _, slow = auth_server  # 2 requests a minute: the third waits about 30 s
    waits: list[float] = []
    with TuningClient(target, api_key=slow, max_retries=2, sleep=waits.append) as client:
        client.info()
        client.evaluate("bbt", _population(1), TEXTS[:1], CHOICES)
        with pytest.raises(QuotaExceeded, match="retry after") as caught:
            client.evaluate("bbt", _population(1), TEXTS[:1], CHOICES)
    assert len(waits) == 2 and all(20 < wait < 40 for wait in waits)  # the server's delay, not backoff
    assert caught.value.retry_after and caught.value.retry_after > 20
    impatient: list[float] = []
    client = TuningClient(target, api_key=slow, max_retry_wait=5, sleep=impatient.append)
    with client, pytest.raises(QuotaExceeded):
        client.info()
    assert impatient == []  # a delay beyond max_retry_wait is not slept through


def test_no_plaintext_key_to_remote_hosts() -> None:
    assert is_loopback_target("127.0.0.1:5") and is_loopback_target("localhost:5")
    assert is_loopback_target("[::1]:5") and is_loopback_target("unix:/tmp/cbpt.sock")
    assert not is_loopback_target("example.com:443") and not is_loopback_target("10.0.0.1:50051")
    with pytest.raises(ClientError, match="plaintext"):
        TuningClient("example.com:50051", api_key="cbpt_x", tls=False)


def test_tls_and_mutual_tls(engine, tmp_path: Path) -> None:
    certs_module = pytest.importorskip("cbpt.server.front.certs")
    from cbpt.server.front.app import serve_in_background
    from cbpt.server.settings import ServerSettings

    certs = certs_module.generate_dev_certificates(
        tmp_path / "certs", ["localhost", "127.0.0.1"], client=True
    )
    settings = ServerSettings.from_flags(
        host="127.0.0.1",
        port=0,
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        client_ca=certs.ca_cert,
        grace_seconds=1,
    )
    with serve_in_background(engine, settings) as target:
        mutual = TuningClient(
            target,
            root_certificates=certs.ca_cert,
            client_cert=certs.client_cert,
            client_key=certs.client_key,
        )
        with mutual:
            assert mutual.info().model_id
        started = time.monotonic()
        no_cert = TuningClient(target, root_certificates=certs.ca_cert, max_retries=0, timeout=10)
        with no_cert, pytest.raises(ClientError):
            no_cert.info()
        assert time.monotonic() - started < 10


def test_budget_used_is_what_the_server_charged(tmp_path: Path) -> None:
    """The server's budgets count candidates x examples (x choices in full-choice mode); the client's
    ``stats.budget_used`` counts the same, split or not, so what it shows matches the provider's books."""
    keys_module = pytest.importorskip("cbpt.server.front.keys")
    from cbpt.common.limits import Limits
    from cbpt.server.testing import tiny_engine
    from tests.client.conftest import _serve

    keys, usage = tmp_path / "keys.json", tmp_path / "usage.json"
    key = keys_module.add_key(keys, "alice", max_concurrent=1)
    settings = {"api_keys_file": keys, "usage_file": usage, "evaluations_total": 10_000}
    for target in _serve(tiny_engine(limits=Limits(max_examples=5)), **settings):
        with TuningClient(target, api_key=key) as client:
            client.evaluate("bbt", _population(3), TEXTS, CHOICES)  # 3 x 12, split into 5-example calls
            client.evaluate("bbt", _population(2), TEXTS[:4], [[" a", " b", " c"]] * 4, mode="full_choice")
            assert client.stats.candidate_evaluations == 5  # the tuner's unit is unchanged
            assert client.stats.calls >= 1 + 3 + 1  # info, then the 12 texts in three calls
            used = client.stats.budget_used
    charged = json.loads(usage.read_text())["usage"]["alice"]["total"]
    assert used == charged == 3 * 12 + 2 * 4 * 3
