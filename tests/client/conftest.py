"""Fixtures for the client tests: task folders on disk and real loopback servers on tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cbpt.client.rpc.sdk import TuningClient
from tests.client.helpers import TaskFactory, write_task


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep keys out of the real home folder and stray settings out of the CLI."""
    monkeypatch.setenv("CBPT_KEY_FILE", str(tmp_path / "keys" / "checkpoint.key"))
    for name in ("CBPT_API_KEY", "CBPT_SERVER", "CBPT_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_task(tmp_path: Path) -> TaskFactory:
    """Write data/train.jsonl, data/test.jsonl and a task file (paths relative to it); return its path."""

    def make(
        name: str = "task.yaml",
        *,
        per_class: int = 12,
        shots: int = 4,
        dev: int = 2,
        rows: list[dict[str, Any]] | None = None,
        **overrides: Any,
    ) -> Path:
        return write_task(
            tmp_path / "project", name, per_class=per_class, shots=shots, dev=dev, rows=rows, **overrides
        )

    return make


# -- real loopback servers (need the [server] extra) ------------------------------------------------
def _serve(engine: Any, **settings: Any) -> Iterator[str]:
    app = pytest.importorskip("cbpt.server.front.app")
    from cbpt.server.settings import ServerSettings

    values = {
        "host": "127.0.0.1",
        "port": 0,
        "insecure": True,
        "allow_no_auth": True,
        "grace_seconds": 1.0,
        **settings,
    }
    with app.serve_in_background(engine, ServerSettings.from_flags(**values)) as target:
        yield target


@pytest.fixture(scope="session")
def engine():
    testing = pytest.importorskip("cbpt.server.testing")
    return testing.tiny_engine()


@pytest.fixture(scope="session")
def server(engine) -> Iterator[str]:
    """A plaintext loopback server on the tiny model: adapters none (dim 0), bbt and cbp (dim 16)."""
    yield from _serve(engine)


@pytest.fixture(scope="session")
def limited_server() -> Iterator[str]:
    """The same tiny model (same fingerprint) behind small request limits, to force splitting."""
    testing = pytest.importorskip("cbpt.server.testing")
    from cbpt.common.limits import Limits

    limits = Limits(max_candidates=3, max_examples=5, max_sequences=12, max_text_chars=120)
    yield from _serve(testing.tiny_engine(limits=limits))


@pytest.fixture(scope="session")
def other_model_server() -> Iterator[str]:
    """A tiny model with other weights, hence another fingerprint."""
    testing = pytest.importorskip("cbpt.server.testing")
    yield from _serve(testing.tiny_engine(seed=1))


@pytest.fixture(scope="session")
def auth_server(engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """(target, a valid key, a rate-limited key with 2 requests a minute)."""
    auth = pytest.importorskip("cbpt.server.front.keys")
    keys = tmp_path_factory.mktemp("apikeys") / "keys.json"
    good = auth.add_key(keys, "alice")
    slow = auth.add_key(keys, "bob", requests_per_minute=2)
    for target in _serve(engine, api_keys_file=keys):
        yield target, good, slow


@pytest.fixture
def client(server: str) -> Iterator[TuningClient]:
    with TuningClient(server, timeout=60, max_retries=1) as tuning_client:
        yield tuning_client
