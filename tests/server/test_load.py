"""Load: 8 clients tuning at once against one server process.

Each client (its own API key, its own texts and labels) runs a short CMA-ES loop through the real
client SDK. Together they must see no failure beyond deliberate, retried refusals, the numbers of
each client one at a time (within 1e-4: merged calls share chunks), and a server whose resident
memory stays flat (within 10%) after warm-up. The latency percentiles are printed (pytest -s).
Over the queue bound, a call is refused with RESOURCE_EXHAUSTED at once, never left hanging.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cma
import grpc
import numpy as np
import pytest

from cbpt.client.rpc.sdk import TuningClient
from cbpt.server.engine import ScoringEngine
from cbpt.server.front.app import serve_in_background
from cbpt.server.front.keys import add_key
from cbpt.v1 import tuning_pb2_grpc
from tests.server.helpers import GatedEngine, candidates, evaluate_request, failure, plain_settings
from tests.server.processes import ServerProcess

CLIENTS = 8
GENERATIONS = 4
POPSIZE = 6
CHOICES = [" positive", " negative"]
_GLOBAL_RNG = threading.Lock()
WORDS = ["fine", "awful", "gripping", "dull", "moving", "slow", "funny", "long", "bright", "grim"]


@dataclass
class Run:
    """What one client's tuning loop saw: each generation's log-probs, its final mean, call latencies."""

    scores: list[np.ndarray] = field(default_factory=list)
    mean: np.ndarray | None = None
    latencies: list[float] = field(default_factory=list)
    retries: int = 0


def _task(index: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(100 + index)
    texts = [f"Review {index}.{i}: {' '.join(rng.choice(WORDS, 4))}\nSentiment:" for i in range(8)]
    return texts, rng.integers(0, 2, len(texts))


def tune(target: str, key: str, index: int, client_class: type[TuningClient] = TuningClient) -> Run:
    """CMA-ES on this client's private labels; only candidates and texts go to the server."""
    texts, labels = _task(index)
    run = Run()
    options = {"popsize": POPSIZE, "seed": index + 1, "verbose": -9, "maxiter": GENERATIONS}
    with _GLOBAL_RNG:
        es = cma.CMAEvolutionStrategy(np.zeros(16), 0.5, options)  # seeds numpy's global generator
        state = np.random.get_state()
    with client_class(target, api_key=key, timeout=120, max_retries=20) as client:
        for _ in range(GENERATIONS):
            with _GLOBAL_RNG:  # pycma samples from numpy's global generator: keep each client's stream
                np.random.set_state(state)
                population = np.asarray(es.ask(), dtype=np.float32)
                state = np.random.get_state()
            started = time.perf_counter()
            log_probs = client.evaluate("bbt-cue", population, texts, CHOICES, cue="\nSentiment:")
            run.latencies.append(time.perf_counter() - started)
            run.scores.append(log_probs)
            losses = -log_probs[:, np.arange(len(labels)), labels].mean(axis=1)
            es.tell(list(population.astype(np.float64)), losses.tolist())
        run.retries = client.stats.retries
    run.mean = np.asarray(es.mean)
    return run


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def load_server(tmp_path_factory: pytest.TempPathFactory):
    keys_file = tmp_path_factory.mktemp("load") / "keys.json"
    keys = [add_key(keys_file, f"client{i}") for i in range(CLIENTS)]
    server = ServerProcess(
        "tests.server.tiny_server", "--keys", str(keys_file), "--pass-seconds", "0", "--batch-sequences", "64"
    )
    try:
        yield server, server.address(), keys
    finally:
        server.kill()


def _concurrently(target: str, keys: list[str]) -> list[Run]:
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(tune, target, key, index) for index, key in enumerate(keys)]
        return [future.result() for future in futures]  # any failure raises here


def test_eight_clients_at_once_equal_one_at_a_time_with_flat_memory(load_server) -> None:
    server, target, keys = load_server
    alone = [tune(target, key, index) for index, key in enumerate(keys)]
    _concurrently(target, keys)  # warm-up: every key's cache and every code path once
    warm = _rss_bytes(server.process.pid)
    rounds = [_concurrently(target, keys) for _ in range(3)]
    end = _rss_bytes(server.process.pid)
    for together in rounds:
        for single, run in zip(alone, together, strict=True):
            for expected, got in zip(single.scores, run.scores, strict=True):
                np.testing.assert_allclose(got, expected, atol=1e-4)
            np.testing.assert_allclose(run.mean, single.mean, atol=1e-4)  # the same tuning trajectory
    latencies = np.array([t for together in rounds for run in together for t in run.latencies])
    retries = sum(run.retries for together in rounds for run in together)
    p50, p99 = np.percentile(latencies, [50, 99])
    solo = np.median([t for run in alone for t in run.latencies])
    print(
        f"\nload: {CLIENTS} clients x {GENERATIONS} generations x 3 rounds = {len(latencies)} calls, "
        f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (alone: median {solo * 1000:.0f} ms), "
        f"retried refusals {retries}, server RSS {warm / 2**20:.1f} MB after warm-up -> {end / 2**20:.1f} MB"
    )
    assert end <= 1.10 * warm, (warm, end)
    assert "evaluate failed" not in server.messages()


def test_over_the_queue_bound_is_refused_at_once(engine: ScoringEngine, tmp_path: Path) -> None:
    gated = GatedEngine(engine)
    keys_file = tmp_path / "keys.json"
    bearers = [[("authorization", f"Bearer {add_key(keys_file, f'k{i}')}")] for i in range(4)]
    settings = plain_settings(api_keys_file=keys_file, max_queued_requests=2)
    with (
        serve_in_background(gated, settings) as target,  # type: ignore[arg-type]
        grpc.insecure_channel(target) as channel,
    ):
        stub = tuning_pb2_grpc.TuningStub(channel)
        request = evaluate_request(candidates(1))
        running = stub.Evaluate.future(request, metadata=bearers[0], timeout=60)
        assert gated.entered.wait(10)
        queued = [stub.Evaluate.future(request, metadata=bearers[0], timeout=60) for _ in range(2)]
        _until_queued(gated, channel, request, bearers[1])
        seconds = []
        for _ in range(10):
            started = time.perf_counter()
            with pytest.raises(grpc.RpcError) as caught:
                stub.Evaluate(
                    request, metadata=bearers[2], timeout=5
                )  # a hang would end in DEADLINE_EXCEEDED
            seconds.append(time.perf_counter() - started)
            refused = failure(caught.value)
            assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED and refused.retry_seconds is not None
        gated.release.set()
        assert running.result().num_candidates == 1 and all(q.result().num_candidates == 1 for q in queued)
    print(
        f"\nover the queue bound: refused in median {np.median(seconds) * 1000:.1f} ms, "
        f"max {max(seconds) * 1000:.1f} ms"
    )
    assert np.median(seconds) < 0.1


def _until_queued(gated: GatedEngine, channel: grpc.Channel, request, bearer) -> None:
    """Until both queued calls wait (a probe call is refused as busy), without timing anything."""
    stub = tuning_pb2_grpc.TuningStub(channel)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            stub.Evaluate(request, metadata=bearer, timeout=0.5)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # it got queued: try again
            continue
        raise AssertionError("a probe was scored while the engine was held")
    raise AssertionError("the queue never filled")
