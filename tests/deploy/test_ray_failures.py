"""When replicas fail or fill up: a killed replica is restarted by Ray and the client's retry finishes
the run on the same vector; a full queue is refused with RESOURCE_EXHAUSTED and a retry delay."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

pytest.importorskip("ray", reason="the Ray backend needs the [ray] extra")

import ray

from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.tuner import Tuner
from cbpt.server.engine.scoring import ScoringEngine
from cbpt.server.front.app import serve_in_background
from cbpt.server.recipe import EngineRecipe
from cbpt.v1 import tuning_pb2_grpc
from tests.deploy.builders import make_task, wait_until
from tests.deploy.conftest import deployed
from tests.deploy.helpers import Gate, gated
from tests.server.helpers import RpcFailure, call_fails, candidates, evaluate_request, failure, plain_settings

TUNING = {"adapter": "bbt-suffix", "budget": 16, "popsize": 4, "seed": 0}


def test_a_killed_replica_is_restarted_and_the_retry_finishes_the_run(
    ray_session: Any, recipe: EngineRecipe, reference: ScoringEngine, tmp_path: Path
) -> None:
    from ray import serve

    task = make_task(tmp_path)
    with serve_in_background(reference, plain_settings()) as target, TuningClient(target) as client:
        uninterrupted = Tuner(client, task, **TUNING).run()
    gate = Gate.remote(hold_call=5)  # the third generation's train call: mid-run
    backend = deployed(gated(recipe, gate), "cbpt-kill")
    try:
        with (
            serve_in_background(backend, plain_settings()) as target,
            TuningClient(target, timeout=300, max_retries=8) as client,
            ThreadPoolExecutor(1) as pool,
        ):
            run = pool.submit(Tuner(client, task, **TUNING).run)
            victim = wait_until(lambda: ray.get(gate.held.remote()), "a replica held mid-run")
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            gate.release.remote()
            resumed = run.result()
            retries = client.stats.retries
        survivors = wait_until(backend_replicas(backend), "a live replica")
    finally:
        serve.delete("cbpt-kill")
    assert retries >= 1  # the killed call failed over to a retry
    assert victim not in survivors  # Serve started a new replica in its place
    assert np.array_equal(resumed.vector, uninterrupted.vector)
    # Equal up to float rounding: a retried call's passes may be composed otherwise (merging, padding),
    # which on some CPUs moves a loss's low bits (2e-10 in one CI run), not the vector.
    resumed_losses = [row.best_loss for row in resumed.history]
    np.testing.assert_allclose(resumed_losses, [row.best_loss for row in uninterrupted.history], atol=1e-6)


def backend_replicas(backend: Any) -> Any:
    import asyncio

    return lambda: set(asyncio.run(backend.replica_stats(calls=2)))


def test_a_full_queue_is_refused_with_a_retry_delay(ray_session: Any, recipe: EngineRecipe) -> None:
    from ray import serve

    gate = Gate.remote(hold_call=1)
    backend = deployed(gated(recipe, gate), "cbpt-busy", max_queued=1)  # one on the replica, one waiting
    try:
        with (
            serve_in_background(backend, plain_settings()) as target,
            grpc.insecure_channel(target) as channel,
            ThreadPoolExecutor(2) as pool,
        ):
            stub = tuning_pb2_grpc.TuningStub(channel)
            running = pool.submit(stub.Evaluate, evaluate_request(candidates(2, seed=1)), timeout=120)
            wait_until(lambda: ray.get(gate.held.remote()), "the first call held on the replica")
            queued = pool.submit(stub.Evaluate, evaluate_request(candidates(1, seed=2)), timeout=120)
            threading.Event().wait(1.0)  # let it reach the front's queue
            refused = call_fails(stub.Evaluate, evaluate_request(candidates(3, seed=3)))
            gate.release.remote()
            answers = (running.result().num_candidates, queued.result().num_candidates)
    finally:
        serve.delete("cbpt-busy")
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "busy" in refused.message and refused.retry_seconds is not None
    assert answers == (2, 1)


def test_a_call_whose_client_leaves_is_cancelled_on_its_replica(
    ray_session: Any, recipe: EngineRecipe
) -> None:
    """The in-process scheduler's cancellation holds across the hop: the deadline passes while the
    replica is held in the call's first step, and the replica's scheduler drops the call."""
    from ray import serve

    gate = Gate.remote(hold_call=1)
    backend = deployed(gated(recipe, gate), "cbpt-cancel")
    try:
        with (
            serve_in_background(backend, plain_settings()) as target,
            grpc.insecure_channel(target) as channel,
        ):
            stub = tuning_pb2_grpc.TuningStub(channel)
            with ThreadPoolExecutor(1) as pool:
                call = pool.submit(_expires, stub, evaluate_request(candidates(2, seed=1)), 10.0)
                wait_until(lambda: ray.get(gate.held.remote()), "the call held on the replica")
                left = call.result()  # its deadline passed while held
            gate.release.remote()
            stats = backend_replicas_stats(backend)
            cancelled = wait_until(lambda: sum(s.cancelled for s in stats().values()), "the replica's cancel")
            answered = stub.Evaluate(evaluate_request(candidates(1, seed=2)), timeout=120)  # still serving
    finally:
        serve.delete("cbpt-cancel")
    assert left.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cancelled == 1 and answered.num_candidates == 1


def _expires(stub: tuning_pb2_grpc.TuningStub, request: Any, deadline: float) -> RpcFailure:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Evaluate(request, timeout=deadline)
    return failure(caught.value)


def backend_replicas_stats(backend: Any) -> Any:
    import asyncio

    return lambda: asyncio.run(backend.replica_stats(calls=2))
