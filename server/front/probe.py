"""Asking a server's ``grpc.health.v1`` service whether it serves: for probes, demos and tests.

Health stays outside API-key auth, so a probe needs only the CA (and a client certificate under
mTLS). The container healthcheck, ``scripts/demo.py`` and the tests all call these two functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def channel_to(
    target: str, ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.Channel:
    """A plaintext channel without ``ca``, else TLS (mTLS with a client ``cert`` and ``key``)."""
    if ca is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )
    return grpc.secure_channel(target, credentials)


def check(channel: grpc.Channel, service: str = "cbpt.v1.Tuning", timeout: float = 5.0) -> str:
    """The serving status's name (``SERVING``, ``NOT_SERVING``, ...); raises grpc.RpcError if unreachable."""
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=timeout
    )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_until_serving(
    channel: grpc.Channel,
    timeout: float,
    *,
    service: str = "cbpt.v1.Tuning",
    alive: Callable[[], bool] = lambda: True,
    interval: float = 0.5,
) -> None:
    """Poll until the service reports SERVING; TimeoutError after ``timeout`` s, RuntimeError if
    ``alive()`` (e.g. "the server process still runs") turns false first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the server exited before it was serving")
        try:
            if check(channel, service, timeout=min(2.0, timeout)) == "SERVING":
                return
        except grpc.RpcError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"the server was not serving within {timeout:.0f} s")
