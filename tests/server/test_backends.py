"""The backend seam and the Ray backend's Ray-free parts: settings, statuses (refusals across the hop:
test_error_table.py), and generators that load on demand (none of this needs Ray installed)."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from cbpt.server.deploy.generators import OnDemandGenerators, build_engine_on_demand
from cbpt.server.deploy.settings import check_ray_transport
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.errors import BackendUnavailable, ConfigError
from cbpt.server.front.status import error_status
from cbpt.server.recipe import EngineRecipe
from cbpt.server.scheduling.backends import InProcessBackend, ScoringBackend, as_backend
from cbpt.server.settings import ServerSettings
from tests.deploy.builders import DOMAINS, save_tiny_model, tiny_recipe
from tests.server.helpers import TEXTS, candidates


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> EngineRecipe:
    return tiny_recipe(save_tiny_model(tmp_path_factory.mktemp("on-demand")))


def test_an_engine_is_served_in_process_and_a_backend_as_given(engine: ScoringEngine) -> None:
    backend = as_backend(engine)
    assert isinstance(backend, InProcessBackend) and backend.info() == engine.info()
    assert as_backend(backend) is backend and isinstance(backend, ScoringBackend)


def test_an_unavailable_backend_is_unavailable_with_a_retry_delay() -> None:
    mapped = error_status(BackendUnavailable("a scoring replica is unavailable", retry_after=1.5))
    assert mapped.code == grpc.StatusCode.UNAVAILABLE
    details = [detail for key, detail in mapped.trailing_metadata if key == "grpc-status-details-bin"]
    rich = status_pb2.Status.FromString(details[0])
    assert rich.code == code_pb2.UNAVAILABLE
    info = error_details_pb2.RetryInfo()
    assert rich.details[0].Unpack(info) and info.retry_delay.ToMilliseconds() == 1500


def test_ray_options_need_the_ray_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--ray-address, --replicas need --backend ray"):
        ServerSettings.from_flags(replicas=2, ray_address="auto", insecure=True).check_backend()
    with pytest.raises(ConfigError, match="below --replicas"):
        ServerSettings.from_flags(backend="ray", replicas=3, max_replicas=2).check_backend()
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'cbp-tuning\[ray\]'"):
        ServerSettings.from_flags(backend="ray").check_backend()
    ServerSettings().check_backend()  # the default backend needs nothing


@pytest.mark.parametrize("address", ["ray-head:6379", "ray://198.51.100.7:10001", "auto"])
def test_a_ray_cluster_off_loopback_needs_rays_tls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, address: str
) -> None:
    """ "Tenants" (#22), finding 9: Ray's channels carry every call's texts, in plaintext unless Ray's
    TLS is on; before, the front joined any cluster."""
    for variable in ("RAY_USE_TLS", "RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "ray-head:6379")  # what "auto" then joins
    with pytest.raises(ConfigError, match=r"texts included\) would reach the replicas in plaintext"):
        ServerSettings.from_flags(backend="ray", ray_address=address).check_backend()
    monkeypatch.setenv("RAY_USE_TLS", "1")
    with pytest.raises(ConfigError, match="RAY_USE_TLS is on but RAY_TLS_SERVER_CERT is unset"):
        ServerSettings.from_flags(backend="ray", ray_address=address).check_backend()
    for variable in ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT"):
        (tmp_path / variable).write_text("pem")
        monkeypatch.setenv(variable, str(tmp_path / variable))
    check_ray_transport(address)  # with Ray's TLS on and its files readable, any address will do


def test_a_ray_instance_on_loopback_needs_no_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for address in ("127.0.0.1:6379", "localhost:6379", "ray://127.0.0.1:10001", "[::1]:6379", "auto"):
        check_ray_transport(address)


def test_the_recipe_is_what_the_settings_serve(recipe: EngineRecipe) -> None:
    model = recipe.engine.model
    settings = ServerSettings.from_flags(model=model, bbt_dimension=8, threads=1, max_candidates=5)
    made = settings.recipe
    assert (made.engine.model, made.engine.threads, made.limits.max_candidates) == (model, 1, 5)
    assert made.adapters is settings.adapters and made.adapters.bbt_dimension == 8  # the sections, whole
    assert pickle.loads(pickle.dumps(made)) == made  # it travels to replicas as it is


@pytest.mark.parametrize("on_demand", [False, True])
def test_a_replica_builds_its_engine_with_every_engine_setting(recipe: EngineRecipe, on_demand: bool) -> None:
    """The replica's engine is built by the in-process server's own path, so no knob is left behind
    (on-demand generators once built an engine by hand, without the job-state bound)."""
    knobs = {"batch_sequences": 3, "batch_tokens": 100, "token_cache_entries": 7, "job_state_mb": 5}
    tuned = recipe.model_copy(update={"engine": recipe.engine.model_copy(update=knobs)})
    engine, _, _ = build_engine_on_demand(tuned, on_demand=on_demand)
    batching = engine.batching
    assert (batching.batch_sequences, batching.batch_tokens) == (3, 100)
    assert engine.state_budget.max_bytes == 5 << 20
    assert engine.prepare.cache.capacity == 7 and engine.limits == recipe.limits


def _score(engine: ScoringEngine, adapter: str) -> np.ndarray:
    request = ScoreRequest(adapter, candidates(2), TEXTS, [" positive", " negative"])
    return engine.score(request).log_probs


def test_generators_on_demand_are_described_at_start_and_score_as_if_loaded(recipe: EngineRecipe) -> None:
    eager = recipe.build()
    engine, generators, info = build_engine_on_demand(recipe, on_demand=True)
    assert info == eager.info()  # every adapter advertised, in the specs' order
    assert generators is not None and generators.names == {f"cbp-{domain}" for domain in DOMAINS}
    assert generators.resident() == [] and "cbp-alpha" not in engine.adapters
    with generators.hold(generators.load("cbp-alpha")):
        np.testing.assert_array_equal(_score(engine, "cbp-alpha"), _score(eager, "cbp-alpha"))


def test_an_evicted_generator_stays_until_no_request_holds_it(recipe: EngineRecipe) -> None:
    engine, generators, _ = build_engine_on_demand(recipe, on_demand=True)
    assert isinstance(generators, OnDemandGenerators)
    first = generators.load("cbp-alpha")
    with generators.hold(first):
        generators.evict(first)  # the multiplexer's LRU dropped it while a request still needs it
        assert generators.resident() == ["cbp-alpha"]
    assert generators.resident() == []
    second = generators.load("cbp-alpha")
    with generators.hold(second):
        generators.evict(first)  # a late eviction of the old copy leaves the reloaded one alone
        assert engine.adapters["cbp-alpha"] is second.adapter
    assert generators.loads == 2 and generators.resident() == ["cbp-alpha"]


def test_a_generator_for_other_weights_is_refused_at_start(recipe: EngineRecipe, tmp_path: Path) -> None:
    from cbpt.server.errors import ModelMismatch

    other = save_tiny_model(tmp_path / "other")  # the same tiny model: rewrite one card's fingerprint
    card = other / DOMAINS[0] / "generator.json"
    card.write_text(card.read_text().replace('"base_model_fingerprint": "', '"base_model_fingerprint": "0'))
    with pytest.raises(ModelMismatch, match="generator was built for model"):
        build_engine_on_demand(tiny_recipe(other), on_demand=True)


def test_this_machines_own_address_needs_no_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    """A local Ray's address is this machine's own (Ray turns 127.0.0.1 into it): nothing crosses a
    network."""
    import socket

    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            pytest.skip("no network interface besides loopback")
        own = probe.getsockname()[0]
    check_ray_transport(f"{own}:6379")
    with pytest.raises(ConfigError, match="plaintext"):
        check_ray_transport("198.51.100.250:6379")  # TEST-NET-2: documentation only, never ours
