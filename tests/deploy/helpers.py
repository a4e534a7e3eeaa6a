"""A gate that holds a replica inside a forward pass, for the Ray failure tests.

Replicas import this module by name (Ray hands workers the test process's ``sys.path``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from cbpt.server.engine.scoring import ScoringEngine
from cbpt.server.recipe import EngineRecipe


@ray.remote(num_cpus=0)
class Gate:
    """Holds the ``hold_call``-th engine call of any replica (counted across restarts) until released."""

    def __init__(self, hold_call: int) -> None:
        self.calls = 0
        self.hold_call = hold_call
        self.held_by: str | None = None
        self.opened = asyncio.Event()

    async def arrive(self, replica: str) -> None:
        self.calls += 1
        if self.calls == self.hold_call:
            self.held_by = replica
            await self.opened.wait()

    def held(self) -> str | None:
        return self.held_by

    def release(self) -> None:
        self.opened.set()


class GatedJob:
    """The engine's job; its first step reports to the gate (which may hold it)."""

    def __init__(self, job: Any, gate: Any) -> None:
        self._job = job
        self._gate = gate
        self._arrived = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def step(self) -> bool:
        if not self._arrived:
            self._arrived = True
            ray.get(self._gate.arrive.remote(ray.get_runtime_context().get_actor_name() or ""))
        return bool(self._job.step())


class GatedEngine:
    """The real engine; each call (a scheduler's job, or ``score_many``) first reports to the gate."""

    def __init__(self, engine: ScoringEngine, gate: Any) -> None:
        self._engine = engine
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def job(self, requests: list) -> GatedJob:
        return GatedJob(self._engine.job(requests), self._gate)

    def score_many(self, requests: list) -> list:
        ray.get(self._gate.arrive.remote(ray.get_runtime_context().get_actor_name() or ""))
        return self._engine.score_many(requests)


class GatedRecipe(EngineRecipe):
    gate: Any = None

    def build(self, defer: Any = None) -> ScoringEngine:
        return GatedEngine(super().build(defer), self.gate)  # type: ignore[return-value]


def gated(recipe: EngineRecipe, gate: Any) -> GatedRecipe:
    return GatedRecipe(**dict(recipe), gate=gate)
