"""The ``ray`` section of the server's settings: where the Ray backend's replicas run, how many, and
what each holds. No Ray here, so settings validate before Ray (an optional extra) is imported."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cbpt.common.cli import flag
from cbpt.common.net import is_this_host, target_host
from cbpt.server.errors import ConfigError
from cbpt.server.front.settings import read_file

Batching = Literal["scheduler", "serve-batch"]
RAY_TLS_FILES = ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")
# What only the Ray backend reads: given with the in-process backend, each is refused as a mistake.
_RAY_ONLY = ("ray_address", "replicas", "max_replicas", "generators_per_replica")


class RaySettings(BaseModel):
    """The Ray Serve deployment: its replicas, their resources, and how each gathers a batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ray_address: str | None = Field(
        None, description="Ray cluster to join (ray://head:10001, auto); unset: start a local Ray instance"
    )
    replicas: int = Field(1, ge=1, description="engine replicas (Ray); the minimum when autoscaling")
    max_replicas: int | None = Field(None, ge=1, description="autoscale up to this many replicas (Ray)")
    replica_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each replica")
    replica_gpus: float = Field(0.0, ge=0, description="GPUs for each replica (1: a GPU each)")
    generators_per_replica: int = Field(
        0, ge=0, description="0: replicas load every generator at start; N: on demand, N each (LRU)"
    )
    ray_batching: Batching = Field(
        "scheduler", description="how a replica merges requests: the scheduler (default) or @serve.batch"
    )

    def deployment_options(self, max_queued: int) -> dict[str, Any]:
        """Serve's deployment options; each replica takes ``max_queued`` calls, and the router as many
        more."""
        scaling: dict[str, Any] = {"num_replicas": self.replicas}
        if self.max_replicas is not None:
            scaling = {
                "autoscaling_config": {
                    "min_replicas": self.replicas,
                    "max_replicas": self.max_replicas,
                    "target_ongoing_requests": 2,
                }
            }
        return {
            **scaling,
            "ray_actor_options": {"num_cpus": self.replica_cpus, "num_gpus": self.replica_gpus},
            "max_ongoing_requests": max_queued,
            "max_queued_requests": max_queued,
            "max_constructor_retry_count": 3,  # a model that will not load fails the deploy soon
            "logging_config": {"enable_access_log": False},  # per-request lines belong to the front
        }

    def check(self, backend: str) -> None:
        """Ray settings only with the Ray backend, and the Ray backend only with Ray installed."""
        if backend != "ray":
            defaults = type(self).model_fields
            given = [name for name in _RAY_ONLY if getattr(self, name) != defaults[name].default]
            if given:
                raise ConfigError(f"{', '.join(flag(name) for name in given)} need --backend ray")
            return
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ConfigError(f"--max-replicas {self.max_replicas} is below --replicas {self.replicas}")
        if self.ray_address is not None:
            check_ray_transport(self.ray_address)
        if importlib.util.find_spec("ray") is None:
            raise ConfigError("--backend ray needs Ray: pip install 'cbp-tuning[ray]'")


def check_ray_transport(address: str) -> None:
    """Requests carry the texts to the replicas: over Ray's own channels, which are plaintext unless
    Ray's TLS is on. So a cluster is joined on this machine only (loopback or one of its own
    addresses: nothing crosses a network), or with ``RAY_USE_TLS=1`` and its certificate, key and
    CA (the deployment's) readable on this node."""
    if os.environ.get("RAY_USE_TLS", "").lower() in {"1", "true"}:
        for variable in RAY_TLS_FILES:
            if not os.environ.get(variable):
                raise ConfigError(f"RAY_USE_TLS is on but {variable} is unset")
            read_file(Path(os.environ[variable]), variable)
        return
    if address == "auto":  # RAY_ADDRESS, or else the cluster a `ray start` on this machine runs
        address = os.environ.get("RAY_ADDRESS") or "localhost"
    if not is_this_host(target_host(address.removeprefix("ray://"))):
        raise ConfigError(
            f"--ray-address {address}: requests (texts included) would reach the replicas in plaintext; "
            f"join a Ray instance on this machine, or set RAY_USE_TLS=1 and {', '.join(RAY_TLS_FILES)} "
            "on every node"
        )
