"""Assembles the grpc.aio server: interceptors, health, reflection, TLS, limits, budgets, metrics,
key reloading and honest draining on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from cbpt.common.net import is_loopback_host, listen_address
from cbpt.server.errors import ConfigError
from cbpt.server.front.auth import ApiKeyInterceptor
from cbpt.server.front.budgets import EvaluationBudgets
from cbpt.server.front.decoding import RequestDecodingInterceptor
from cbpt.server.front.keys import KeyStore
from cbpt.server.front.metrics import Metrics
from cbpt.server.front.service import SERVICE_NAME, TuningServicer
from cbpt.server.front.settings import MetricsSettings, TlsSettings
from cbpt.server.scheduling.backends import ScoringBackend
from cbpt.server.settings import ServerSettings
from cbpt.v1 import tuning_pb2_grpc

if TYPE_CHECKING:  # a front whose backend is elsewhere loads no model (nor torch)
    from cbpt.server.engine.scoring import ScoringEngine

log = logging.getLogger(__name__)

# Room above max_message_bytes so the service, not the transport, answers a too-large request
# with INVALID_ARGUMENT naming its size.
MESSAGE_HEADROOM = 1024 * 1024


@dataclass
class _Parts:
    server: grpc.aio.Server
    health: health_aio.HealthServicer
    servicer: TuningServicer
    port: int
    metrics: Metrics
    keys: KeyStore | None = None
    budgets: EvaluationBudgets | None = None
    metrics_port: int | None = None
    watcher: asyncio.Task[None] | None = None


async def build_server(engine: ScoringEngine | ScoringBackend, settings: ServerSettings) -> grpc.aio.Server:
    """A bound, not yet started server; call it on the event loop that will run the server."""
    return (await _build(engine, settings)).server


async def _build(engine: ScoringEngine | ScoringBackend, settings: ServerSettings) -> _Parts:
    settings.check_serving()
    metrics = Metrics()
    auth = settings.auth
    keys = KeyStore.from_file(auth.api_keys_file) if auth.api_keys_file is not None else None
    interceptors: list[grpc.aio.ServerInterceptor] = []
    budgets = None
    mtls = settings.tls.client_ca is not None
    if keys is not None or mtls:  # every API key and every client certificate is a tenant
        interceptors.append(
            ApiKeyInterceptor(
                keys,
                auth.requests_per_minute,
                auth.max_concurrent_per_key,
                on_refusal=metrics.refused,
                mtls=mtls,
            )
        )
        budgets = EvaluationBudgets(keys, auth.evaluations_per_day, auth.evaluations_total, auth.usage_file)
    interceptors.append(RequestDecodingInterceptor())  # inside auth: a refused key never reaches parsing
    servicer = TuningServicer(
        engine, settings.scheduler, budgets=budgets, protection=settings.protection.build(), metrics=metrics
    )
    cache = servicer.backend.text_states
    if cache is not None:
        metrics.watch_cache(lambda: cache.total_bytes)
    message_limit = servicer.limits.max_message_bytes + MESSAGE_HEADROOM
    server = grpc.aio.server(
        interceptors=interceptors,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,  # a bound on handlers, whoever calls
        options=[
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
            ("grpc.so_reuseport", 0),  # a second server on the same port is an error, not a silent share
        ],
    )
    tuning_pb2_grpc.add_TuningServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for service in ("", SERVICE_NAME):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    if settings.reflection:
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        names = (SERVICE_NAME, health_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    address = listen_address(settings.host, settings.port)
    try:
        if settings.tls.on:
            port = server.add_secure_port(address, _credentials(settings.tls))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpc's bind failure: the port is taken or the host is not ours
        port = 0
    if port == 0:
        await servicer.close()
        raise ConfigError(f"cannot listen on {address}: address in use or not available")
    parts = _Parts(server, health, servicer, port, metrics, keys, budgets)
    if keys is not None:
        keys.on_reload = _keys_reload_reporter(parts)
    if settings.metrics.metrics_port is not None:
        try:
            parts.metrics_port = _serve_metrics(metrics, settings.metrics)
        except ConfigError:
            await servicer.close()
            raise
    if keys is not None and auth.keys_reload_seconds > 0:
        parts.watcher = asyncio.get_running_loop().create_task(
            _watch_keys(keys, auth.keys_reload_seconds), name="cbpt-keys-watcher"
        )
    if keys is None and not mtls:
        log.warning("serving without API keys: any local process can call", extra={"auth": False})
    log.info(
        "server built",
        extra={
            "address": listen_address(settings.host, port),
            "tls": settings.tls.on,
            "mtls": mtls,
            "auth": keys is not None,
            "reflection": settings.reflection,
            "text_cache_mb": settings.text_cache.text_cache_mb,
            "text_cache_mb_per_key": settings.text_cache.text_cache_mb_per_key,
            "job_state_mb": settings.engine.job_state_mb,
            "score_decimals": settings.protection.score_decimals,
            "score_noise": settings.protection.score_noise,
        },
    )
    return parts


def _serve_metrics(metrics: Metrics, settings: MetricsSettings) -> int:
    host, port = settings.metrics_host, settings.metrics_port
    assert port is not None
    if not is_loopback_host(host):
        log.warning("metrics endpoint beyond loopback, as configured", extra={"address": host})
    try:
        return metrics.serve(host, port)
    except OSError as error:
        raise ConfigError(
            f"cannot serve metrics on {listen_address(host, port)}: {error.strerror or error}"
        ) from None


async def _watch_keys(keys: KeyStore, interval: float) -> None:
    """Reload the keys file whenever it changes (added, removed or expired keys, new limits)."""
    while True:
        await asyncio.sleep(interval)
        if keys.changed():
            keys.reload()


def _keys_reload_reporter(parts: _Parts) -> Callable[[bool], None]:
    """A failed reload refuses every call (keys.py says why): the metric, and health NOT_SERVING for
    the Tuning service until a reload succeeds, make that loud; overall health stays SERVING, since
    the process itself is fine and a restart would not fix the file."""
    loop = asyncio.get_running_loop()

    def report(ok: bool) -> None:
        parts.metrics.keys_reloaded(ok)
        if parts.servicer.draining:
            return  # draining already says NOT_SERVING, and stays so
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        loop.call_soon_threadsafe(lambda: loop.create_task(parts.health.set(SERVICE_NAME, status)))

    return report


def _credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    client_ca = tls.client_ca_bytes()
    return grpc.ssl_server_credentials(
        [tls.key_pair()], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def graceful_stop(parts: _Parts, grace: float, hurry: asyncio.Event | None = None) -> None:
    """Drain honestly: health NOT_SERVING while the port stays open (a probe gets an answer), new
    calls refused as retryable, in-flight calls given up to ``grace`` seconds (or until ``hurry``);
    calls still running then are stopped at their next chunk and answered UNAVAILABLE with a retry
    delay, so a client's retries resend them after the restart. Returns as soon as nothing is left."""
    in_flight = parts.servicer.in_flight
    log.info("shutting down", extra={"grace_seconds": grace, "num_calls": in_flight})
    await parts.health.enter_graceful_shutdown()
    if not await parts.servicer.drain(grace, hurry):
        log.warning(
            "grace over: stopping the calls still running at their next chunk",
            extra={"grace_seconds": grace, "num_calls": parts.servicer.in_flight},
        )
    await parts.servicer.close()
    await parts.server.stop(1.0)
    if parts.watcher is not None:
        parts.watcher.cancel()
    if parts.budgets is not None:
        parts.budgets.save()
    parts.metrics.close()
    log.info("stopped")


async def serve(engine: ScoringEngine | ScoringBackend, settings: ServerSettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain (a second signal ends the grace at once)."""
    parts = await _build(engine, settings)
    await parts.server.start()
    info = engine.info()
    log.info(
        "serving",
        extra={
            "address": listen_address(settings.host, parts.port),
            "model_id": info.model_id,
            "fingerprint": info.fingerprint[:16],
        },
    )
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    if parts.keys is not None:
        loop.add_signal_handler(signal.SIGHUP, parts.keys.reload)
    try:
        await stop.wait()
        await graceful_stop(parts, settings.grace_seconds, hurry)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


class BackgroundServer:
    """The aio server on a daemon thread with its own event loop, for tests, benchmarks and notebooks."""

    def __init__(
        self, engine: ScoringEngine | ScoringBackend, settings: ServerSettings | None = None
    ) -> None:
        self._engine = engine
        self.settings = settings or ServerSettings.from_flags(
            host="127.0.0.1", port=0, insecure=True, allow_no_auth=True
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="cbpt-server", daemon=True)
        self._ready = threading.Event()
        self._stop_requested: asyncio.Event | None = None
        self._grace = self.settings.grace_seconds
        self._error: BaseException | None = None
        self.port = 0
        self.metrics_port: int | None = None

    @property
    def target(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return listen_address(host, self.port)

    def start(self, timeout: float = 30.0) -> str:
        """Start serving and return the target; raises what building the server raised."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the background server did not start in time")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error
        return self.target

    def stop(self, grace: float | None = None, timeout: float = 60.0) -> None:
        """Graceful stop, blocking until done; ``grace`` defaults to the settings' grace_seconds."""
        if self._stop_requested is None or not self._thread.is_alive():
            return
        if grace is not None:
            self._grace = grace
        self._loop.call_soon_threadsafe(self._stop_requested.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the background server did not stop in time")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        try:
            self._stop_requested = asyncio.Event()
            parts = await _build(self._engine, self.settings)
            await parts.server.start()
            self.port, self.metrics_port = parts.port, parts.metrics_port
        except BaseException as exc:
            self._error = exc
            self._stop_requested = None
            return
        finally:
            self._ready.set()
        await self._stop_requested.wait()
        await graceful_stop(parts, self._grace)


@contextlib.contextmanager
def serve_in_background(
    engine: ScoringEngine | ScoringBackend, settings: ServerSettings | None = None
) -> Iterator[str]:
    """Run a server for the ``with`` block and yield its target, e.g. ``"127.0.0.1:41234"``.

    ``settings`` defaults to plaintext without API keys on 127.0.0.1 with a free port (``port=0``
    picks one).
    On exit the server stops gracefully, giving calls still in flight at most one second.
    """
    server = BackgroundServer(engine, settings)
    target = server.start()
    try:
        yield target
    finally:
        server.stop(grace=1.0)
