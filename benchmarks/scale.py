"""Scale-out on Ray Serve, side by side in one run: what the Ray hop costs, and what mixing tenants costs.

    .venv/bin/python -m benchmarks.scale [--model smollm2] [--clients 1,2,4,8] [--generations 4]

Sections (``--sections``):

- ``clients``: 1, 2, 4 and 8 concurrent tuning clients, each sending ``--generations`` calls of
  ``--popsize`` candidates x ``--examples`` texts of its own (as the tuner does: the next call
  after the answer), through the real gRPC front to: the in-process engine; Ray with 1 replica; Ray
  with 2 replicas; Ray with 1 replica gathering batches with ``@serve.batch`` instead of the scheduler.
  Throughput, p50/p99 latency, requests per engine call, and the Ray hop (a generation-sized
  request carried to a replica and back without scoring). Each client's first call (text
  encoding, warm-up) is not timed.
- ``mixing``: ``--tenants`` tenants, each with its own vectors, texts and key scope, in one engine
  call, against one tenant's pass of the same size and against the same requests one at a time;
  and tenants on two adapters mixed in one call: ``bbt-cue`` and the shipped ``cbp-opinion`` generator
  (both on the answer cue, so they can share passes) where the model has it, else ``bbt-suffix``.

Replicas split the cores (2 replicas: ``cores // 2`` torch threads each). Writes
benchmarks/results/scale.json and scale.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import RESULTS, SHARED, machine, sst2_texts, write_json, write_text
from benchmarks.scale_report import render
from cbpt.client.rpc.sdk import TuningClient
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.front.app import serve_in_background
from cbpt.server.recipe import EngineRecipe, EngineSettings
from cbpt.server.settings import ServerSettings

ADAPTER, FALLBACK_ADAPTER = "bbt-cue", "bbt-suffix"
CHOICES = [" negative", " positive"]
CUE = "\nSentiment:"
SETTINGS = {"host": "127.0.0.1", "port": 0, "insecure": True, "allow_no_auth": True, "grace_seconds": 1.0}
BACKENDS = ("in-process", "ray, 1 replica", "ray, 2 replicas", "ray, 1 replica, @serve.batch")


def texts_pool(count: int) -> list[str]:
    if (SHARED / "sst2" / "dev.jsonl").is_file():
        return [f"Review: {text}" for text in sst2_texts(count)]
    words = [
        "a",
        "warm",
        "clever",
        "tired",
        "loud",
        "slow",
        "funny",
        "dull",
        "moving",
        "gripping",
        "mess",
        "joy",
    ]
    rng = np.random.default_rng(0)
    return [f"Review: {' '.join(rng.choice(words, size=8))} #{i}" for i in range(count)]


def recipe_for(model: str, folder: Path, dimension: int, prompt_length: int) -> EngineRecipe:
    if model == "tiny":
        from cbpt.server.testing import tiny_bundle

        bundle = tiny_bundle()
        bundle.model.save_pretrained(folder)
        bundle.tokenizer.save_pretrained(folder)
        model = str(folder)
    served = ServedAdapters(
        bbt_dimension=dimension, prompt_length=prompt_length
    )  # cbp-opinion where it matches
    return EngineRecipe(engine=EngineSettings(model=model), adapters=served)


# -- concurrent clients ------------------------------------------------------------------------------
def run_clients(
    target: str, clients: int, texts: list[list[str]], dimension: int, popsize: int, generations: int
) -> dict[str, Any]:
    """``clients`` threads, each tuning-like: one call per generation, the next after the answer."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    ready, go = threading.Barrier(clients + 1), threading.Event()

    def client(index: int) -> None:
        rng = np.random.default_rng(index)
        with TuningClient(target, timeout=600, max_retries=8) as tuning:
            tuning.evaluate(ADAPTER, rng.normal(size=(popsize, dimension)), texts[index], CHOICES, cue=CUE)
            ready.wait()
            go.wait()
            for _ in range(generations):
                z = rng.normal(size=(popsize, dimension)).astype(np.float32)
                started = time.perf_counter()
                tuning.evaluate(ADAPTER, z, texts[index], CHOICES, cue=CUE)
                latencies[index].append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    every = sorted(latency for per_client in latencies for latency in per_client)
    sequences = clients * generations * popsize * len(texts[0])
    return {
        "clients": clients,
        "calls": len(every),
        "wall_seconds": wall,
        "sequences_per_second": sequences / wall,
        "p50_ms": 1000 * float(np.percentile(every, 50)),
        "p99_ms": 1000 * float(np.percentile(every, 99)),
    }


@contextmanager
def backends(
    recipe: EngineRecipe, engine: ScoringEngine, cores: int, address: str | None
) -> Iterator[dict[str, Any]]:
    """The four backends; the Ray ones on the cluster at ``address``, or a local Ray instance."""
    from ray import serve

    from cbpt.server.deploy.ray_serve import connect, deploy, stop_local_ray
    from cbpt.server.deploy.settings import RaySettings

    owns_ray = connect(address, num_cpus=cores)
    made: dict[str, Any] = {"in-process": engine}
    layouts = {  # name: (replicas, batching, app)
        BACKENDS[1]: (1, "scheduler", "scale-1"),
        BACKENDS[2]: (2, "scheduler", "scale-2"),
        BACKENDS[3]: (1, "serve-batch", "scale-batch"),
    }
    try:
        for name, (replicas, batching, app) in layouts.items():
            threads = max(1, cores // replicas)
            ray = RaySettings(replicas=replicas, replica_cpus=cores / 4, ray_batching=batching)
            threaded = recipe.engine.model_copy(update={"threads": threads})
            made[name] = deploy(recipe.model_copy(update={"engine": threaded}), ray, app_name=app)
        yield made
    finally:
        for _, _, app in layouts.values():
            serve.delete(app)
        if owns_ray:
            stop_local_ray()


def engine_calls(backend: Any) -> tuple[int, int]:
    """(engine calls, requests) summed over a Ray backend's replicas, as of their last answers."""
    served = backend.served.values()
    return sum(s.engine_calls for s in served), sum(s.requests for s in served)


def hop_ms(backend: Any, request: ScoreRequest, repeats: int = 30) -> float:
    async def trips() -> list[float]:
        seconds = []
        for _ in range(repeats + 3):
            started = time.perf_counter()
            await backend.ping(request)
            seconds.append(time.perf_counter() - started)
        return seconds[3:]

    return 1000 * statistics.median(asyncio.run(trips()))


def clients_section(args: argparse.Namespace, recipe: EngineRecipe, engine: ScoringEngine) -> dict[str, Any]:
    counts = [int(n) for n in args.clients.split(",")]
    pool = texts_pool(max(counts) * args.examples)
    texts = [pool[i * args.examples : (i + 1) * args.examples] for i in range(max(counts))]
    rows: list[dict[str, Any]] = []
    with backends(recipe, engine, os.cpu_count() or 1, args.ray_address) as made, ExitStack() as fronts:
        targets = {
            name: fronts.enter_context(serve_in_background(backend, ServerSettings.from_flags(**SETTINGS)))
            for name, backend in made.items()
        }
        for clients in counts:  # interleaved: every backend at one load before the next load
            for name, target in targets.items():
                before = engine_calls(made[name]) if name != "in-process" else None
                row = run_clients(target, clients, texts, args.dimension, args.popsize, args.generations)
                row["backend"] = name
                if before is not None:
                    after = engine_calls(made[name])
                    row["requests_per_engine_call"] = (after[1] - before[1]) / max(1, after[0] - before[0])
                rows.append(row)
                print(row, flush=True)
        z = np.random.default_rng(0).normal(size=(args.popsize, args.dimension)).astype(np.float32)
        request = ScoreRequest(ADAPTER, z, texts[0], CHOICES, cue=CUE)
        hop = {name: hop_ms(made[name], request) for name in BACKENDS[1:3]}
    return {"rows": rows, "hop_ms": hop}


# -- tenants mixed in one engine call --------------------------------------------------------------
def second_adapter(engine: ScoringEngine) -> str:
    """An adapter whose rows can share ``ADAPTER``'s passes (same placement and prompt length), else
    one that cannot."""
    first = engine.adapters[ADAPTER]
    for name, adapter in engine.adapters.items():
        if name != ADAPTER and (adapter.placement, adapter.prompt_length) == (
            first.placement,
            first.prompt_length,
        ):
            return name
    return FALLBACK_ADAPTER


def mixing_section(args: argparse.Namespace, engine: ScoringEngine) -> dict[str, Any]:
    tenants, popsize, examples, dimension = args.tenants, args.popsize, args.examples, args.dimension
    pool = texts_pool(tenants * examples)
    rng = np.random.default_rng(1)

    def tenant(index: int, adapter: str = ADAPTER) -> ScoreRequest:
        z = rng.normal(size=(popsize, engine.adapters[adapter].dimension)).astype(np.float32)
        own = pool[index * examples : (index + 1) * examples]
        return ScoreRequest(adapter, z, own, CHOICES, cue=CUE, scope=f"tenant-{index}")

    def single() -> ScoreRequest:  # one tenant, the same rows: the tenants' texts, popsize candidates
        z = rng.normal(size=(popsize, dimension)).astype(np.float32)
        return ScoreRequest(ADAPTER, z, pool, CHOICES, cue=CUE, scope="tenant-0")

    def timed(requests: list[ScoreRequest]) -> float:
        started = time.perf_counter()
        engine.score_many(requests)
        return time.perf_counter() - started

    arms: dict[str, list[float]] = {"single": [], "mixed": [], "one_at_a_time": [], "mixed_adapters": []}
    alone_latencies: list[list[float]] = []
    other = second_adapter(engine)
    adapters = [ADAPTER if i % 2 == 0 else other for i in range(tenants)]
    timed([single()])  # warm caches: steady-state tuning reuses each text's states
    timed([tenant(i, a) for i, a in enumerate(adapters)])
    for _ in range(args.repeats):  # interleaved arms, fresh vectors each time
        arms["single"].append(timed([single()]))
        arms["mixed"].append(timed([tenant(i) for i in range(tenants)]))
        finished, elapsed = [], 0.0
        for i in range(tenants):
            elapsed += timed([tenant(i)])
            finished.append(elapsed)
        arms["one_at_a_time"].append(elapsed)
        alone_latencies.append(finished)
        arms["mixed_adapters"].append(timed([tenant(i, a) for i, a in enumerate(adapters)]))
    median = {name: statistics.median(values) for name, values in arms.items()}
    sequences = tenants * popsize * examples
    return {
        "tenants": tenants,
        "sequences": sequences,
        "mixed_adapters": [ADAPTER, other],
        "adapters_share_passes": engine.adapters[other].placement is engine.adapters[ADAPTER].placement,
        "seconds": median,
        "ms_per_sequence": {name: 1000 * seconds / sequences for name, seconds in median.items()},
        "mixed_over_single": median["mixed"] / median["single"],
        "one_at_a_time_over_mixed": median["one_at_a_time"] / median["mixed"],
        "tenant_latency_ms": {
            "mixed": [1000 * median["mixed"]] * tenants,
            "one_at_a_time": [
                1000 * statistics.median(column) for column in zip(*alone_latencies, strict=True)
            ],
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="smollm2", help="'smollm2', 'tiny' (plumbing only), an id or folder"
    )
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--generations", type=int, default=4, help="timed calls per client")
    parser.add_argument("--popsize", type=int, default=8)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--dimension", type=int, default=500)
    parser.add_argument("--prompt-length", type=int, default=10)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sections", default="clients,mixing")
    parser.add_argument("--ray-address", default=None, help="a running Ray cluster (default: start one)")
    parser.add_argument("--output", default="scale", help="file stem under benchmarks/results, or a path")
    parser.add_argument("--note", default="", help="what the report should say about this run's machine")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cbpt-scale-") as folder:
        recipe = recipe_for(args.model, Path(folder), args.dimension, args.prompt_length)
        engine = recipe.build()
        info = engine.info()
        payload: dict[str, Any] = {
            "machine": machine(),
            "model": info.model_id,
            "settings": {k: v for k, v in vars(args).items() if k not in ("output", "sections", "note")},
            "note": args.note,
        }
        if "mixing" in sections:
            payload["mixing"] = mixing_section(args, engine)
            print(payload["mixing"], flush=True)
        if "clients" in sections:
            payload["clients"] = clients_section(args, recipe, engine)
    payload["total_seconds"] = time.perf_counter() - started
    write_json(f"{args.output}.json", payload)
    write_text(f"{args.output}.md", render(payload))


def rerender(stem: str = "scale") -> None:
    """The Markdown again from the JSON (after a change to the report, or to its note)."""
    write_text(f"{stem}.md", render(json.loads((RESULTS / f"{stem}.json").read_text())))


if __name__ == "__main__":
    main()
