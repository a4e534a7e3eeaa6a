"""What crosses Ray between the front and the replicas ("Tenants" #22, finding 9): every call's texts.
So a Ray instance the front starts binds loopback only and never spills objects to disk."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray", reason="the Ray backend needs the [ray] extra")

from cbpt.common.net import is_loopback_host, target_host


def test_the_local_ray_instance_is_on_loopback_and_never_spills(ray_session: Any) -> None:
    from ray._private import worker

    node = worker._global_node
    if not node.head:  # RAY_ADDRESS named a cluster: not the instance the front starts
        pytest.skip("a cluster from RAY_ADDRESS, not a local instance")
    assert node._config["automatic_object_spilling_enabled"] is False  # before: spilled under pressure
    assert is_loopback_host(target_host(ray_session.get_runtime_context().gcs_address))
    assert node.node_ip_address == "127.0.0.1"
