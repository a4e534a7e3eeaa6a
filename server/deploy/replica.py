"""One Ray Serve replica of the scoring engine (``pip install 'cbp-tuning[ray]'``).

Each replica builds the engine once from the front's recipe, by the in-process server's own path
(``EngineRecipe.build``), runs it behind the in-process server's own backend (``InProcessBackend``:
the scheduler on one engine thread), and scores the requests Serve routes to it, whatever API key sent
them: requests that arrive together share forward passes (merged when they have one mode and cue and
one adapter, or adapters placing one prompt length after the text; scores equal to unmerged ones within
1e-4), while each request's ``scope`` keeps cached text states per key.

Two ways to gather a batch: the server's own scheduler (default, scheduler.py), the in-process
backend's behaviour on every replica: tenants take turns one forward pass at a time, calls that
arrive during a pass join the next jobs, and a call cancelled by its front leaves its job at the
next chunk; or ``@serve.batch``, which closes a batch ``merge_window_ms`` after its first request
and, while the engine is busy, queues such batches one behind the other, each run to its end
(benchmarks/scale.py measures the difference). Refusals come back as values
(``messages.Refusal``), not exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray
from ray import serve

from cbpt.server.deploy.generators import LoadedGenerator, build_engine_on_demand
from cbpt.server.deploy.messages import Refusal, ReplicaDescription, ReplicaStats, Served
from cbpt.server.engine.types import EngineInfo, ScoreRequest, ScoreResult
from cbpt.server.errors import InvalidRequest, ServerError, UnknownAdapter
from cbpt.server.logs import LoggingSettings
from cbpt.server.recipe import EngineRecipe
from cbpt.server.scheduling.backends import InProcessBackend
from cbpt.server.scheduling.merging import MergeSettings

if TYPE_CHECKING:
    from cbpt.server.deploy.settings import RaySettings
    from cbpt.server.engine.jobs import CountJob, ScoringJob
    from cbpt.server.engine.scoring import ScoringEngine


class _CountingEngine:
    """The engine as the scheduler sees it, counting its jobs (or calls) and the requests they carried."""

    def __init__(self, engine: ScoringEngine) -> None:
        self.engine = engine
        self.calls = 0
        self.requests = 0

    def info(self) -> EngineInfo:
        return self.engine.info()

    def score_many(self, requests: list[ScoreRequest]) -> list[ScoreResult | InvalidRequest]:
        self.calls += 1
        self.requests += len(requests)
        return self.engine.score_many(requests)

    def job(self, requests: Sequence[ScoreRequest]) -> ScoringJob:
        self.calls += 1
        self.requests += len(requests)
        return self.engine.job(requests)

    def count_job(self, texts: Sequence[str]) -> CountJob:
        return self.engine.count_job(texts)  # tokenising only: not an engine call the stats count


class _Cancellations:
    """The replica scheduler's observer: it counts the calls cancelled from the front."""

    def __init__(self) -> None:
        self.count = 0

    def step(self, sequences: int, seconds: float) -> None:
        pass

    def cancelled(self, reason: str) -> None:
        self.count += 1

    def queue(self, waiting: int, running: int) -> None:
        pass


@dataclass(frozen=True)
class _Queued:
    request: ScoreRequest
    size: int  # sequences towards the batch budget, at most the budget (a larger request runs alone)


def _batch_size(items: list[_Queued]) -> int:
    return sum(item.size for item in items)


class EngineReplica:
    """The deployment's body; ``ray_serve.deploy`` wraps it with ``serve.deployment``."""

    def __init__(
        self, recipe: EngineRecipe, settings: RaySettings, scheduler: MergeSettings, logs: LoggingSettings
    ) -> None:
        logs.configure()  # the same privacy filter as the front
        engine, self._generators, self._info = build_engine_on_demand(
            recipe, on_demand=settings.generators_per_replica > 0
        )
        self._engine = _CountingEngine(engine)
        self._name = ray.get_runtime_context().get_actor_name() or ""
        self._known = [adapter.name for adapter in self._info.adapters]
        self._cancellations = _Cancellations()
        self._backend = InProcessBackend(self._engine, scheduler, self._cancellations)
        self._budget = scheduler.merge_max_sequences
        # Serve's decorators are applied per replica, to plain functions, so that the operator's
        # settings size them (the multiplexer keeps its state on the function it wraps).
        self._batched: Any = None
        if settings.ray_batching == "serve-batch":

            async def score_batch(items: list[_Queued]) -> list[ScoreResult | InvalidRequest]:
                requests = [item.request for item in items]
                return await self._backend.on_engine_thread(self._engine.score_many, requests)

            self._batched = serve.batch(
                max_batch_size=scheduler.merge_max_sequences,
                batch_wait_timeout_s=scheduler.window_seconds,
                batch_size_fn=_batch_size,
            )(score_batch)
        if self._generators is not None:

            async def load(name: str) -> LoadedGenerator:
                return await self._load(name)

            self._load_generator = serve.multiplexed(
                max_num_models_per_replica=settings.generators_per_replica
            )(load)

    async def describe(self) -> ReplicaDescription:
        on_demand = self._generators.names if self._generators is not None else frozenset()
        return ReplicaDescription(self._info, on_demand)

    async def score(self, request: ScoreRequest, tenant: str = "") -> Served:
        """``tenant`` (the front's API key id) gets its fair share of this replica's passes."""
        outcome = await self._outcome(request, tenant)
        return Served(outcome, self._name, self._engine.calls, self._engine.requests)

    async def count_tokens(self, texts: Sequence[str], tenant: str = "") -> list[int] | Refusal:
        """Counts, or the engine's refusal of the texts (empty, too many, too long) as a value; the
        texts are tokenised in ``tenant``'s turns of this replica's scheduler, as its scoring is."""
        try:
            return await self._backend.count_tokens(texts, tenant)
        except ServerError as error:  # any refusal crosses as its wire form (messages.Refusal)
            return Refusal.of(error)

    async def _outcome(self, request: ScoreRequest, tenant: str) -> ScoreResult | Refusal:
        try:
            async with self._adapter_held(request.adapter):
                if self._batched is None:
                    return await self._backend.score(request, tenant or request.scope)
                outcome = await self._batched(_Queued(request, min(request.sequences, self._budget)))
            if isinstance(outcome, InvalidRequest):
                raise outcome
            return outcome
        except ServerError as error:  # any refusal crosses as its wire form (messages.Refusal)
            return Refusal.of(error)

    async def ping(self, request: ScoreRequest) -> int:
        """The hop without the engine: what carrying a request to a replica and back costs."""
        return request.sequences

    async def stats(self) -> ReplicaStats:
        generators = self._generators
        return ReplicaStats(
            replica=self._name,
            engine_calls=self._engine.calls,
            requests=self._engine.requests,
            resident_generators=tuple(generators.resident()) if generators else (),
            generator_loads=generators.loads if generators else 0,
            cached_texts=self._engine.engine.text_states.entries_per_scope(),
            cancelled=self._cancellations.count,
        )

    @asynccontextmanager
    async def _adapter_held(self, name: str) -> AsyncIterator[None]:
        """A generator named by the request stays in the engine until the request is scored."""
        if name not in self._known:
            raise UnknownAdapter(name, self._known)
        if self._generators is None or name not in self._generators.names:
            yield
            return
        loaded = await self._load_generator(name)
        with self._generators.hold(loaded):
            yield

    async def _load(self, name: str) -> LoadedGenerator:
        assert self._generators is not None  # on the engine thread: loads queue behind forward passes
        return await self._backend.on_engine_thread(self._generators.load, name)
