"""The Ray backend behind the same front: the client tunes as in process (answers within 1e-5), replicas serve
concurrent clients as one at a time, refusals keep their status, and keys never share cached texts."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

pytest.importorskip("ray", reason="the Ray backend needs the [ray] extra")

from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.tuner import Tuner
from cbpt.server.deploy.ray_serve import RayServeBackend
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.front.app import serve_in_background
from cbpt.server.front.keys import add_key
from cbpt.server.recipe import EngineRecipe
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.deploy.builders import make_task
from tests.deploy.conftest import deployed
from tests.server.helpers import DIMENSION, TEXTS, call_fails, candidates, evaluate_request, plain_settings

# Requests of different adapters, shapes and choices, as several tenants would send them.
REQUESTS = [
    ScoreRequest("bbt", candidates(2, seed=1), TEXTS, [" positive", " negative"]),
    ScoreRequest(
        "bbt-suffix", candidates(3, seed=2), TEXTS[:1], [" good", " bad", " meh"], cue="\nSentiment:"
    ),
    ScoreRequest("cbp-alpha", candidates(1, seed=3), TEXTS[::-1], [" positive", " negative"]),
    ScoreRequest("none", np.zeros((1, 0), np.float32), TEXTS, [" yes", " no"]),
    ScoreRequest("cbp-beta", candidates(2, seed=4), TEXTS, [" positive", " negative"]),
    ScoreRequest("bbt", candidates(4, seed=5), TEXTS[1:], [" positive", " negative"]),
]


class _RecordingClient(TuningClient):
    """The SDK, keeping a copy of every score array the server returned (to compare two backends)."""

    def __init__(self, target: str, **options: Any) -> None:
        super().__init__(target, **options)
        self.answers: list[np.ndarray] = []

    def evaluate(self, *args: Any, **kwargs: Any) -> np.ndarray:
        scores = super().evaluate(*args, **kwargs)
        self.answers.append(scores.copy())
        return scores


def _tune(target: str, task_folder: Path) -> tuple[Any, list[np.ndarray]]:
    task = make_task(task_folder)
    with _RecordingClient(target, timeout=120, max_retries=2) as client:
        tuner = Tuner(client, task, adapter="bbt-suffix", budget=12, popsize=4, seed=0, fit_bias=True)
        return tuner.run(), client.answers


def test_the_client_tunes_through_ray_as_in_process(
    reference: ScoringEngine, one_replica_target: str, tmp_path: Path
) -> None:
    """Every answer within 1e-5 of the in-process engine's (what the issue asks of two scoring paths),
    hence the same tuned vector, and losses and bias within 1e-6. Not bit for bit: two full-suite
    runs (one in CI) saw a replica's loss differ in the 11th digit (9e-12, then a bias 2e-8 off) at
    identical vectors, while here the in-process engine stays bit-identical across torch thread counts,
    denormal flushing and warm or cold caches, and twelve tuning runs through a replica matched it bit
    for bit."""
    with serve_in_background(reference, plain_settings()) as in_process:
        alone, expected = _tune(in_process, tmp_path / "in-process")
    through_ray, answers = _tune(one_replica_target, tmp_path / "ray")
    for got, want in zip(answers, expected, strict=True):  # strict: as many answers through each
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.array_equal(through_ray.vector, alone.vector)
    np.testing.assert_allclose(through_ray.bias, alone.bias, rtol=0, atol=1e-6)
    for ray_row, row in zip(through_ray.history, alone.history, strict=True):
        np.testing.assert_allclose(
            [ray_row.best_loss, ray_row.mean_loss], [row.best_loss, row.mean_loss], rtol=0, atol=1e-6
        )
        assert ray_row.dev_accuracy == row.dev_accuracy
    assert through_ray.model_fingerprint == alone.model_fingerprint


def test_the_front_advertises_what_the_replicas_serve(
    reference: ScoringEngine, one_replica: RayServeBackend
) -> None:
    assert one_replica.info() == reference.info()


def test_refusals_keep_their_status_and_field(one_replica_target: str) -> None:
    with grpc.insecure_channel(one_replica_target) as channel:
        stub = tuning_pb2_grpc.TuningStub(channel)
        wrong = call_fails(stub.Evaluate, evaluate_request(candidates(1, dimension=DIMENSION + 1)))
        unknown = call_fails(stub.Evaluate, evaluate_request(adapter="bbt-nope"))
    assert wrong.code == grpc.StatusCode.INVALID_ARGUMENT and wrong.field_violations[0][0] == "dimension"
    assert unknown.code == grpc.StatusCode.INVALID_ARGUMENT and unknown.field_violations[0][0] == "adapter"
    assert "known: none, bbt, bbt-suffix, cbp-alpha, cbp-beta" in unknown.message


def test_tokens_are_counted_on_the_replicas_as_in_process(
    one_replica_target: str, reference: ScoringEngine
) -> None:
    texts = [*TEXTS, "word " * 40]
    with grpc.insecure_channel(one_replica_target) as channel:
        stub = tuning_pb2_grpc.TuningStub(channel)
        counts = stub.CountTokens(tuning_pb2.CountTokensRequest(texts=texts), timeout=60).counts
        empty = call_fails(stub.CountTokens, tuning_pb2.CountTokensRequest(texts=[]))
    assert list(counts) == reference.count_tokens(texts)
    assert empty.code == grpc.StatusCode.INVALID_ARGUMENT  # validated at the front, as in process


def _scores(backend: RayServeBackend, requests: list[ScoreRequest], concurrently: bool) -> list[np.ndarray]:
    async def one(request: ScoreRequest) -> np.ndarray:
        return (await backend.score(request)).log_probs

    async def all_of() -> list[np.ndarray]:
        if concurrently:
            return list(await asyncio.gather(*(one(request) for request in requests)))
        return [await one(request) for request in requests]

    return asyncio.run(all_of())


def test_two_replicas_serve_concurrent_clients_as_one_at_a_time(
    ray_session: Any, recipe: EngineRecipe, reference: ScoringEngine
) -> None:
    from ray import serve

    backend = deployed(recipe, "cbpt-two", replicas=2)
    try:
        one_at_a_time = [reference.score(request).log_probs for request in REQUESTS]
        with (
            serve_in_background(backend, plain_settings()) as target,
            ThreadPoolExecutor(len(REQUESTS)) as pool,
        ):

            def client_call(request: ScoreRequest) -> np.ndarray:
                with TuningClient(target, timeout=120) as client:
                    return client.evaluate(
                        request.adapter, request.candidates, request.texts, request.choices, cue=request.cue
                    )

            together = list(pool.map(client_call, REQUESTS * 2))
    finally:
        serve.delete("cbpt-two")
    for alone, merged in zip(one_at_a_time * 2, together, strict=True):
        real = np.isfinite(alone)
        np.testing.assert_allclose(merged[real], alone[real], atol=1e-5)
    served = backend.served  # each replica's running counts, as of its last answer
    assert len(served) == 2 and all(answer.requests > 0 for answer in served.values())
    assert sum(answer.requests for answer in served.values()) == 2 * len(REQUESTS)


def test_serve_batch_mode_scores_as_one_at_a_time(
    ray_session: Any, recipe: EngineRecipe, reference: ScoringEngine
) -> None:
    from ray import serve

    backend = deployed(recipe, "cbpt-batch", ray_batching="serve-batch")
    try:
        together = _scores(backend, REQUESTS, concurrently=True)
        stats = next(iter(asyncio.run(backend.replica_stats()).values()))
    finally:
        serve.delete("cbpt-batch")
    for request, merged in zip(REQUESTS, together, strict=True):
        np.testing.assert_allclose(merged, reference.score(request).log_probs, atol=1e-5)
    assert stats.requests == len(REQUESTS)


def test_keys_never_share_cached_text_states(one_replica: RayServeBackend, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    tenants = {name: add_key(keys, name) for name in ("tenant-a", "tenant-b")}
    texts = ["Review: warm and clever", "Review: a tired mess"]
    request = evaluate_request(candidates(2), texts=texts, adapter="bbt-suffix", cue="\nSentiment:")
    with (
        serve_in_background(one_replica, plain_settings(api_keys_file=keys)) as target,
        grpc.insecure_channel(target) as channel,
    ):
        stub = tuning_pb2_grpc.TuningStub(channel)

        def tokens(tenant: str) -> int:
            metadata = (("authorization", f"Bearer {tenants[tenant]}"),)
            return stub.Evaluate(request, timeout=60, metadata=metadata).tokens_processed

        first_a, first_b, again_a = tokens("tenant-a"), tokens("tenant-b"), tokens("tenant-a")
    cached = next(iter(asyncio.run(one_replica.replica_stats()).values())).cached_texts
    # Each key encoded the texts itself and holds its own copies; the same key reuses its own.
    assert cached["tenant-a"] == len(texts) and cached["tenant-b"] == len(texts)
    assert first_b == first_a and again_a < first_a
