"""Generators on demand: a replica holding one generator at a time serves both domains, loading each
when named (``@serve.multiplexed``, LRU), and scores exactly as a replica holding both."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray", reason="the Ray backend needs the [ray] extra")

from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.recipe import EngineRecipe
from tests.deploy.conftest import deployed
from tests.server.helpers import TEXTS, candidates


def test_generators_load_on_demand_one_per_replica(
    ray_session: Any, recipe: EngineRecipe, reference: ScoringEngine
) -> None:
    from ray import serve

    backend = deployed(recipe, "cbpt-generators", generators_per_replica=1)
    order = ["cbp-alpha", "cbp-beta", "cbp-alpha"]
    requests = [
        ScoreRequest(name, candidates(2, seed=seed), TEXTS, [" positive", " negative"])
        for seed, name in enumerate(order)
    ]

    async def one_by_one() -> list[np.ndarray]:
        return [(await backend.score(request)).log_probs for request in requests]

    try:
        scores = asyncio.run(one_by_one())
        (stats,) = asyncio.run(backend.replica_stats()).values()
    finally:
        serve.delete("cbpt-generators")
    assert backend.info() == reference.info()  # both generators advertised though neither was loaded
    for request, got in zip(requests, scores, strict=True):
        np.testing.assert_allclose(got, reference.score(request).log_probs, atol=1e-6)
    # One generator at a time: alpha, then beta (alpha evicted), then alpha again (beta evicted).
    assert stats.generator_loads == 3 and stats.resident_generators == ("cbp-alpha",)
