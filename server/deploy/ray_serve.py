"""The Ray Serve backend: the same gRPC front, scoring on replicas of the engine.

Ray Serve's own gRPC proxy has none of our interceptors or TLS, so the grpc.aio server stays the
front door (API keys, quotas, validation, health, serde) and hands each validated engine request
to the ``ScoringEngine`` deployment through a deployment handle: Serve routes it to a replica
(those holding a named generator first), queues it when all are busy, and restarts a replica
that dies. Failures come back as the server's own errors, so the front maps them to statuses as
it always has: a full queue is RESOURCE_EXHAUSTED, a dead replica UNAVAILABLE (both with a retry
delay the client honours; the retry reaches a live or restarted replica).

Each replica may be sent ``max_queued_requests`` calls at once (``max_ongoing_requests``), and the
front's router holds at most as many more; beyond that a call is refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
    RequestCancelledError,
)

from cbpt.server.deploy.messages import Refusal, ReplicaDescription, ReplicaStats, Served
from cbpt.server.deploy.replica import EngineReplica
from cbpt.server.deploy.settings import RaySettings
from cbpt.server.engine.types import EngineInfo, ScoreRequest, ScoreResult
from cbpt.server.errors import BackendUnavailable, ServerBusy, ServerShuttingDown
from cbpt.server.logs import LoggingSettings, route_library_loggers
from cbpt.server.model import usable_cores
from cbpt.server.recipe import EngineRecipe
from cbpt.server.scheduling.backends import Reason, ScoringBackend
from cbpt.server.scheduling.merging import MergeSettings

if TYPE_CHECKING:
    from cbpt.server.settings import ServerSettings

log = logging.getLogger(__name__)

APP_NAME = "cbpt"
DEPLOYMENT_NAME = "ScoringEngine"
_UNAVAILABLE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)


class RayServeBackend(ScoringBackend):
    """The servicer's backend over a deployment handle; ``on_close`` runs when the server stops."""

    def __init__(
        self, handle: Any, description: ReplicaDescription, on_close: Callable[[], None] | None = None
    ) -> None:
        self.handle = handle
        self._info = description.info
        self._on_demand = description.on_demand
        self._on_close = on_close
        self._last_call_seconds = 1.0
        self._responses: set[Any] = set()  # calls out on replicas, stopped on close
        self.served: dict[str, Served] = {}  # each replica's latest answer: who served, its counts

    def info(self) -> EngineInfo:
        return self._info

    async def score(
        self, request: ScoreRequest, tenant: str = "", reason: Reason = lambda: "cancelled"
    ) -> ScoreResult:
        handle = self.handle
        if request.adapter in self._on_demand:  # to a replica that holds this generator, if any
            handle = handle.options(multiplexed_model_id=request.adapter)
        started = time.perf_counter()
        response = handle.score.remote(request, tenant)
        self._responses.add(response)
        try:
            served: Served = await response
        except asyncio.CancelledError:  # the client went away: the replica drops it at its next chunk
            response.cancel()
            raise
        except RequestCancelledError:  # close() stopped it
            raise ServerShuttingDown("server is shutting down: the call was stopped") from None
        except BackPressureError:
            raise ServerBusy(
                "server busy: every replica and the queue are full; retry shortly",
                retry_after=self._last_call_seconds,
            ) from None
        except _UNAVAILABLE as error:
            log.warning("replica unavailable", extra={"error_type": type(error).__name__})
            raise BackendUnavailable("a scoring replica is unavailable; retry shortly") from None
        finally:
            self._responses.discard(response)
        self._last_call_seconds = max(0.05, time.perf_counter() - started)
        self.served[served.replica] = served
        if isinstance(served.outcome, Refusal):
            raise served.outcome.error()
        return served.outcome

    async def count_tokens(
        self, texts: Sequence[str], tenant: str = "", reason: Reason = lambda: "cancelled"
    ) -> list[int]:
        response = self.handle.count_tokens.remote(list(texts), tenant)
        try:
            counts: list[int] | Refusal = await response
        except asyncio.CancelledError:  # the client went away: the replica drops it at its next step
            response.cancel()
            raise
        except BackPressureError:
            raise ServerBusy("server busy: every replica and the queue are full; retry shortly") from None
        except _UNAVAILABLE:
            raise BackendUnavailable("a scoring replica is unavailable; retry shortly") from None
        if isinstance(counts, Refusal):
            raise counts.error()
        return counts

    async def ping(self, request: ScoreRequest) -> int:
        """One round trip to a replica carrying ``request``, without scoring it (the hop's cost)."""
        return int(await self.handle.ping.remote(request))

    async def replica_stats(self, calls: int = 16) -> dict[str, ReplicaStats]:
        """Replicas' counters, by replica, from ``calls`` questions; Serve picks which replica answers,
        so with several replicas some may not (``served`` has every replica that scored a request)."""
        answers = await asyncio.gather(*(self.handle.stats.remote() for _ in range(calls)))
        return {stats.replica: stats for stats in answers}

    async def close(self) -> None:
        """Stop the calls still out on replicas (each leaves its job at the next chunk, answered
        UNAVAILABLE), then stop a Ray this server started. The servicer refuses new calls by then
        (draining), so the backend itself needs no closed state."""
        for response in list(self._responses):
            response.cancel()
        if self._on_close is not None:
            await asyncio.to_thread(self._on_close)
            self._on_close = None


def deploy(
    recipe: EngineRecipe,
    settings: RaySettings | None = None,
    scheduler: MergeSettings | None = None,
    logs: LoggingSettings | None = None,
    *,
    app_name: str = APP_NAME,
    on_close: Callable[[], None] | None = None,
) -> RayServeBackend:
    """Deploy the replicas (``settings``: the ``ray`` section; each replica runs the ``scheduler``
    section's scheduler and logs as ``logs`` says) on the connected Ray cluster and wait until they serve.

    Blocking: call it before the server's event loop starts, as the in-process engine is built.
    """
    settings, scheduler = settings or RaySettings(), scheduler or MergeSettings()
    options = settings.deployment_options(scheduler.max_queued_requests)
    deployment = serve.deployment(EngineReplica, name=DEPLOYMENT_NAME, **options)
    bound = deployment.bind(recipe, settings, scheduler, logs or LoggingSettings())
    handle = serve.run(bound, name=app_name, route_prefix=None)
    route_library_loggers()  # Ray and Serve gave their loggers handlers of their own as they started
    description = handle.describe.remote().result()
    log.info(
        "ray backend ready", extra={"replicas": settings.replicas, "model_id": description.info.model_id}
    )
    return RayServeBackend(handle, description, on_close)


def connect(
    address: str | None = None, *, num_cpus: int | None = None, object_store_bytes: int | None = None
) -> bool:
    """Join the Ray cluster at ``address``, or start a local instance on loopback; True when this
    call started Ray (so the caller stops it). Serve starts without its HTTP proxy: ours is the door.

    ``ray.init`` installs a SIGTERM handler that exits the process at once; the front's own handlers
    (drain, then stop) are put back, so SIGTERM still drains."""
    started = not ray.is_initialized()
    handlers = _signal_handlers()
    try:
        if started and address:
            ray.init(address=address, log_to_driver=False)
        elif started:
            _start_local(num_cpus or usable_cores(), object_store_bytes)
    finally:
        _restore(handlers)
    serve.start(proxy_location="Disabled")
    return started and not address


def _signal_handlers() -> dict[signal.Signals, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread sets handlers, Ray's included
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore(handlers: dict[signal.Signals, Any]) -> None:
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


# Requests (texts included) pass through Ray's object store: kept in memory, never spilled to disk.
SYSTEM_CONFIG = {"automatic_object_spilling_enabled": False}


def _start_local(num_cpus: int, object_store_bytes: int | None, attempts: int = 3) -> None:
    """A local Ray, spilling off. Ray opens its ports on every interface whatever the node address
    (Ray 2.60), so it runs with token authentication and a fresh token that lives only in this
    process's environment (Ray's default saves one to ~/.ray/auth_token, readable by all).
    Its raylet gives the node's agents a fixed 15 s to come up (ray-project/ray#65983), which a
    machine busy with other work can miss: try again."""
    given = {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ)
    if os.environ.get("RAY_AUTH_MODE", "token") == "token" and not given:
        # Ray turns token mode on for a new local instance itself (and tells this process so); the
        # token it finds first is this one, which the replicas inherit, so it never saves its own.
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                address="local",  # a new instance, never a cluster this machine happens to run
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                object_store_memory=object_store_bytes,
                _node_ip_address="127.0.0.1",
                _system_config=SYSTEM_CONFIG,
            )
            return
        except Exception as error:  # Ray raises a bare Exception when its node does not start
            ray.shutdown()
            if attempt == attempts or "timed out during startup" not in str(error):
                raise
            log.warning("local ray did not start; retrying", extra={"error_type": type(error).__name__})


def start(settings: ServerSettings) -> RayServeBackend:
    """The CLI's backend: join the cluster (or start a local Ray) and deploy the settings' recipe.

    A local Ray instance started here stops with the server; on a cluster the replicas keep
    serving other fronts (``serve.delete("cbpt")`` removes them).
    """
    owns_ray = connect(settings.ray.ray_address)
    try:
        return deploy(
            settings.recipe,
            settings.ray,
            settings.scheduler,
            settings.logging,
            on_close=stop_local_ray if owns_ray else None,
        )
    except BaseException:
        if owns_ray:
            stop_local_ray()
        raise


def stop_local_ray() -> None:
    with contextlib.suppress(Exception):  # Serve already gone: nothing to stop
        serve.shutdown()
    ray.shutdown()
