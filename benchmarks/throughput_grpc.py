"""The throughput benchmark's sections that go through a loopback gRPC server: a CMA-ES loop (client
overhead, bytes, latency) and several clients at once with and without the dynamic batcher."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from benchmarks.harness import CHOICES, CUE
from cbpt.client.optimizers import make_optimizer
from cbpt.client.optimizers.base import OptimizerConfig
from cbpt.client.rpc.sdk import TuningClient
from cbpt.common.losses import compute_losses
from cbpt.server.engine import ScoringEngine
from cbpt.server.front.app import serve_in_background
from cbpt.server.settings import ServerSettings


def over_grpc(engine: ScoringEngine, texts: list[str], adapter: str, generations: int) -> dict:
    """A tuning loop through a loopback gRPC server: client overhead, bytes per candidate, call latency."""
    dimension = engine.adapters[adapter].dimension
    labels = np.arange(len(texts)) % 2
    optimizer = make_optimizer("cma", OptimizerConfig(dimension, 20, 1.0, seed=0, budget=20 * generations))
    client_seconds, call_seconds, server_seconds, walls = 0.0, [], 0.0, 0.0
    with serve_in_background(engine) as target, TuningClient(target) as client:
        client.info()
        client.evaluate(adapter, np.zeros((20, dimension), np.float32), texts, CHOICES, cue=CUE)  # warm-up
        client.stats.reset()
        for _ in range(generations):
            started = time.perf_counter()
            population = optimizer.ask()
            asked = time.perf_counter()
            log_probs = client.evaluate(adapter, population, texts, CHOICES, cue=CUE)
            answered = time.perf_counter()
            optimizer.tell(population, compute_losses("ce", log_probs, labels, with_bias=True).losses)
            finished = time.perf_counter()
            client_seconds += (asked - started) + (finished - answered)
            call_seconds.append(answered - asked)
            walls += finished - started
        server_seconds = client.stats.server_seconds
        sent, received = client.stats.bytes_sent, client.stats.bytes_received
    transport = sum(call_seconds) - server_seconds  # serialisation, loopback and waiting
    return {
        "adapter": adapter,
        "popsize": 20,
        "examples": len(texts),
        "dimension": dimension,
        "generations": generations,
        "ask_tell_loss_share": client_seconds / walls,
        "serialisation_and_transport_share": transport / walls,
        "client_overhead_share": (client_seconds + transport) / walls,
        "bytes_sent_per_candidate_evaluation": sent / (20 * generations),
        "bytes_received_per_candidate_evaluation": received / (20 * generations),
        "call_seconds_p50": float(np.percentile(call_seconds, 50)),
        "call_seconds_p99": float(np.percentile(call_seconds, 99)),
    }


def _small_generations(
    target: str, start: threading.Barrier, seed: int, texts: list[str], generations: int
) -> int:
    """One client: warm up, wait for the others, then send ``generations`` popsize-5 calls; returns
    sequences."""
    rng = np.random.default_rng(seed)
    with TuningClient(target) as client:
        client.evaluate("bbt", np.zeros((1, 500), np.float32), texts, CHOICES, cue=CUE)
        start.wait()
        for _ in range(generations):
            population = rng.standard_normal((5, 500)).astype(np.float32)
            client.evaluate("bbt", population, texts, CHOICES, cue=CUE)
    return 5 * generations * len(texts)


def merged_clients(
    make_engine: Callable[[], ScoringEngine], texts: list[str], clients: int = 4, generations: int = 4
) -> list[dict]:
    """Several clients each sending small generations at once, with and without the dynamic batcher
    (a fresh engine from ``make_engine`` for each)."""
    results = []
    variants = (("merged (default: 5 ms window)", {}), ("one call at a time", {"merge_max_sequences": 1}))
    for label, merge in variants:
        settings = ServerSettings.from_flags(
            host="127.0.0.1", port=0, insecure=True, allow_no_auth=True, **merge
        )
        with serve_in_background(make_engine(), settings) as target, ThreadPoolExecutor(clients) as pool:
            start = threading.Barrier(clients + 1)
            futures = [
                pool.submit(_small_generations, target, start, seed, texts, generations)
                for seed in range(clients)
            ]
            start.wait()
            started = time.perf_counter()
            sequences = sum(future.result() for future in futures)
            seconds = time.perf_counter() - started
        results.append({"variant": label, "clients": clients, "popsize": 5, "examples": len(texts),
                        "seq_per_s": sequences / seconds})  # fmt: skip
        print(f"merging {label}: {results[-1]['seq_per_s']:.1f} seq/s", flush=True)
    return results
