"""What crosses Ray between the front and the replicas ("Tenants" #22, finding 9): every call's texts.

Ray 2.60 opens its ports on every interface whatever the node address, and its channels are plaintext
unless Ray's TLS is on. So the Ray instance the front starts stays on this machine, answers only
holders of a fresh token that exists nowhere but in the processes' environment, and never spills
objects to disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray", reason="the Ray backend needs the [ray] extra")

from cbpt.common.net import is_this_host, target_host


def test_the_local_ray_instance_stays_on_this_machine_with_a_fresh_token_and_never_spills(
    ray_session: Any,
) -> None:
    from ray._private import worker
    from ray._raylet import AuthenticationMode, get_authentication_mode  # type: ignore[attr-defined]

    node = worker._global_node
    if "RAY_ADDRESS" in os.environ:
        pytest.skip("a cluster from RAY_ADDRESS, not a local instance the front starts")
    assert node._config["automatic_object_spilling_enabled"] is False  # before: spilled under pressure
    assert is_this_host(target_host(ray_session.get_runtime_context().gcs_address))
    assert get_authentication_mode() == AuthenticationMode.TOKEN
    token = os.environ["RAY_AUTH_TOKEN"]
    saved = Path.home() / ".ray" / "auth_token"
    assert len(token) == 64 and not (saved.is_file() and saved.read_text().strip() == token)
