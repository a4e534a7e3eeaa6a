"""Prometheus metrics: queue depth, call latency, sequences per second, cache bytes, refusals and
cancellations by reason, failed reloads of the keys file. Off unless ``--metrics-port`` is given;
loopback unless ``--metrics-host`` says otherwise (the numbers say how busy the provider is, so they
stay private by default).

Each server gets its own registry, so several servers in one process (tests) do not collide.
The scheduler, the auth interceptor and the call plumbing (calls.py) report through the small methods below.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    """The server's counters and gauges, in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("cbpt_queue_depth", "Calls waiting for the engine", registry=r)
        self.running_jobs = Gauge(
            "cbpt_running_jobs", "Engine jobs taking turns (at most one per key)", registry=r
        )
        self.call_seconds = Histogram(
            "cbpt_call_seconds",
            "Evaluate latency by status code",
            ["code"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.sequences = Counter("cbpt_sequences", "Sequences run through the model", registry=r)
        self.sequences_per_second = Gauge(
            "cbpt_sequences_per_second",
            "Engine throughput while busy (moving average over steps)",
            registry=r,
        )
        self.steps = Counter("cbpt_engine_steps", "Forward passes the scheduler ran", registry=r)
        self.cache_bytes = Gauge("cbpt_text_cache_bytes", "Bytes of cached text states, all keys", registry=r)
        self.candidates = Counter("cbpt_candidate_evaluations", "Candidates scored and answered", registry=r)
        self.refusals = Counter("cbpt_refusals", "Calls refused, by reason", ["reason"], registry=r)
        self.cancellations = Counter(
            "cbpt_cancellations", "Calls abandoned or stopped, by reason", ["reason"], registry=r
        )
        self.keys_reload_failures = Counter(
            "cbpt_keys_reload_failures", "Reloads of the keys file that failed (calls refused)", registry=r
        )
        self.keys_file_ok = Gauge(
            "cbpt_keys_file_ok",
            "1 while the keys file in force loaded, 0 while calls are refused",
            registry=r,
        )
        self.keys_file_ok.set(1)
        self._rate = 0.0
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -- what the parts report --------------------------------------------------------------------
    def step(self, sequences: int, seconds: float) -> None:
        self.steps.inc()
        self.sequences.inc(sequences)
        if seconds > 0:
            rate = sequences / seconds
            self._rate = rate if self._rate == 0 else 0.9 * self._rate + 0.1 * rate
            self.sequences_per_second.set(self._rate)

    def queue(self, waiting: int, running: int) -> None:
        self.queue_depth.set(waiting)
        self.running_jobs.set(running)

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason=reason).inc()

    def cancelled(self, reason: str) -> None:
        self.cancellations.labels(reason=reason).inc()

    def call(self, code: str, seconds: float, candidates: int = 0) -> None:
        self.call_seconds.labels(code=code).observe(seconds)
        if code == "OK":
            self.candidates.inc(candidates)

    def keys_reloaded(self, ok: bool) -> None:
        self.keys_file_ok.set(1 if ok else 0)
        if not ok:
            self.keys_reload_failures.inc()

    def watch_cache(self, total_bytes: Callable[[], int]) -> None:
        self.cache_bytes.set_function(total_bytes)

    # -- the endpoint -----------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> int:
        """Expose ``/metrics`` over HTTP on a thread; returns the bound port (``port=0`` picks one)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._server.server_port)
        log.info("metrics endpoint", extra={"address": f"{host}:{bound}"})
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
