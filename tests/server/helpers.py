"""Helpers for the server tests: request builders, rich-error readers, channels and small limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from cbpt.common.info import AdapterInfo
from cbpt.common.limits import Limits
from cbpt.common.wire import pack_floats
from cbpt.server.engine import EngineInfo, ScoreRequest, ScoringEngine
from cbpt.server.engine.jobs import ScoringJob
from cbpt.server.front import serde
from cbpt.server.front.app import serve_in_background
from cbpt.server.front.certs import CertificatePaths
from cbpt.server.settings import ServerSettings
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc

DIMENSION = 16
# Small limits so that every "too many / too long" case is a small request.
TEST_LIMITS = Limits(
    max_candidates=4,
    max_examples=6,
    max_choices=4,
    max_text_tokens=48,
    max_text_chars=300,
    max_choice_tokens=4,
    max_sequences=24,
    max_message_bytes=64 * 1024,
)
TEXTS = ["Review: a gripping and moving film\nSentiment:", "Review: dull and far too long\nSentiment:"]
CHOICES = [" positive", " negative"]


def plain_settings(**overrides: object) -> ServerSettings:
    """Plaintext on loopback with a free port: the only plaintext the server accepts (and, unless
    ``api_keys_file`` is given, without keys: allowed on loopback only, with the explicit flag)."""
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "insecure": True,
        "allow_no_auth": True,
        "grace_seconds": 2.0,
    }
    values.update(overrides)
    return ServerSettings.from_flags(**values)


def candidates(num: int = 2, dimension: int = DIMENSION, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(num, dimension)).astype(np.float32)


def evaluate_request(
    z: np.ndarray | None = None,
    texts: list[str] | None = None,
    choices: list[str] | None = None,
    example_choices: list[list[str]] | None = None,
    adapter: str = "bbt",
    **fields: object,
) -> tuning_pb2.EvaluateRequest:
    z = candidates() if z is None else z
    request = tuning_pb2.EvaluateRequest(
        adapter=adapter,
        dimension=z.shape[1],
        num_candidates=z.shape[0],
        candidates=pack_floats(z),
        texts=TEXTS if texts is None else texts,
        **fields,
    )
    if example_choices is not None:
        request.example_choices.extend(tuning_pb2.ChoiceList(choices=c) for c in example_choices)
    else:
        request.shared_choices.SetInParent()  # presence even for an empty list
        request.shared_choices.choices.extend(CHOICES if choices is None else choices)
    return request


@dataclass
class RpcFailure:
    code: grpc.StatusCode
    message: str
    field_violations: list[tuple[str, str]]
    retry_seconds: float | None


def failure(error: grpc.RpcError) -> RpcFailure:
    """Code, message and the grpcio-status rich details of a failed call."""
    status = rpc_status.from_call(error)
    violations: list[tuple[str, str]] = []
    retry: float | None = None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry = info.retry_delay.ToTimedelta().total_seconds()
    return RpcFailure(error.code(), error.details() or "", violations, retry)


def call_fails(method, request, **kwargs) -> RpcFailure:
    """Call ``method`` expecting an RpcError; return what it carried."""
    with pytest.raises(grpc.RpcError) as caught:
        method(request, timeout=20, **kwargs)
    return failure(caught.value)


@dataclass(frozen=True)
class Identity:
    """A client certificate and its key: under mTLS, a tenant."""

    cert: Path
    key: Path


def mtls_settings(certs: CertificatePaths, **overrides: object) -> ServerSettings:
    """TLS on loopback with a free port, client certificates required (each one a tenant)."""
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "tls_cert": certs.server_cert,
        "tls_key": certs.server_key,
        "client_ca": certs.ca_cert,
        "grace_seconds": 2.0,
    }
    values.update(overrides)
    return ServerSettings.from_flags(**values)


def tls_channel(target: str, ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(target, credentials)


class GatedEngine:
    """The real engine, held at a gate before each job's first step so a test can keep a call in flight.

    Only the timing is controlled: every call is still scored by the real engine, step by step.
    """

    def __init__(self, engine: ScoringEngine) -> None:
        self._engine = engine
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[int] = []  # requests carried by each engine job

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def info(self) -> EngineInfo:
        return self._engine.info()

    def job(self, requests: Sequence[ScoreRequest]) -> GatedJob:
        self.calls.append(len(requests))
        return GatedJob(self, self._engine.job(requests))


class GatedJob:
    """An engine job whose first step waits at its engine's gate."""

    def __init__(self, gate: GatedEngine, job: ScoringJob) -> None:
        self._gate = gate
        self._job = job
        self._opened = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def step(self) -> bool:
        if not self._opened:
            self._gate.entered.set()
            if not self._gate.release.wait(timeout=30):
                raise TimeoutError("the test never opened the gate")
            self._opened = True
        return self._job.step()


@dataclass
class FullQueue:
    """A server whose engine holds one call (``running``) while another takes the queue's one place
    (``queued``): the next call finds no room."""

    stub: tuning_pb2_grpc.TuningStub
    gated: GatedEngine
    running: Future[Any]
    queued: Future[Any]


@contextmanager
def full_queue(
    engine: ScoringEngine,
    running: tuning_pb2.EvaluateRequest | None = None,
    queued: Callable[[tuning_pb2_grpc.TuningStub], Any] | None = None,
) -> Iterator[FullQueue]:
    """Serve ``engine`` with one queue place, hold ``running`` in the engine and queue ``queued`` (by
    default a one-candidate Evaluate); the gate opens when the block ends, or at ``gated.release.set()``.
    Both calls have finished once the block has ended."""
    gated = GatedEngine(engine)
    queue = queued or (lambda stub: stub.Evaluate(evaluate_request(candidates(1)), timeout=30))
    with (
        serve_in_background(gated, plain_settings(max_queued_requests=1)) as target,  # type: ignore[arg-type]
        grpc.insecure_channel(target) as channel,
        ThreadPoolExecutor(2) as pool,
    ):
        stub = tuning_pb2_grpc.TuningStub(channel)
        try:
            held = pool.submit(stub.Evaluate, running or evaluate_request(), timeout=30)
            assert gated.entered.wait(10)
            waiting = pool.submit(queue, stub)
            threading.Event().wait(0.3)  # let it take the queue's one place
            yield FullQueue(stub, gated, held, waiting)
        finally:
            gated.release.set()


def serde_request(request: tuning_pb2.EvaluateRequest, scope: str = "") -> ScoreRequest:
    """The engine request the server makes of a wire request (limits wide open, the adapter served
    as the request states it)."""
    stated = AdapterInfo(request.adapter, "bbt", request.dimension, 0, "", "", "prefix")
    limits = Limits(max_candidates=1 << 20)
    return serde.score_request_from_proto(request, limits, {request.adapter: stated}, scope=scope)


class CountingModel:
    """Counts the backbone's forward passes and makes each one take ``seconds``."""

    def __init__(self, engine: ScoringEngine, seconds: float) -> None:
        self.count = 0
        self._changed = threading.Condition()
        self._handle = engine.bundle.model.base_model.register_forward_hook(self._hook)
        self._seconds = seconds

    def _hook(self, *_: object) -> None:
        time.sleep(self._seconds)
        with self._changed:
            self.count += 1
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 60) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.count >= count, timeout), self.count

    def remove(self) -> None:
        self._handle.remove()
