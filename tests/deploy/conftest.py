"""Fixtures for the Ray backend: the shared Ray instance, a tiny model folder, and deployments.

Every deployment here reserves a quarter CPU per replica, so that the few alive at once fit the
two-CPU Ray instance; each is deleted when its tests are done.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cbpt.server.engine.scoring import ScoringEngine
from cbpt.server.front.app import serve_in_background
from cbpt.server.recipe import EngineRecipe
from tests.deploy.builders import save_tiny_model, tiny_recipe
from tests.server.helpers import plain_settings

if TYPE_CHECKING:  # Ray is imported by the fixtures that need it, after the ray_session skip
    from cbpt.server.deploy.ray_serve import RayServeBackend

REPLICA_CPUS = 0.25


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("scale"))


@pytest.fixture(scope="session")
def recipe(model_folder: Path) -> EngineRecipe:
    return tiny_recipe(model_folder)


@pytest.fixture(scope="session")
def reference(recipe: EngineRecipe) -> ScoringEngine:
    """The same recipe built in this process: what every replica must score exactly like."""
    return recipe.build()


def deployed(
    recipe: EngineRecipe, app_name: str, replicas: int = 1, max_queued: int = 64, **ray: Any
) -> RayServeBackend:
    """``ray``: more of the ``ray`` section's settings (``ray_batching``, ``generators_per_replica``)."""
    from cbpt.server.deploy.ray_serve import deploy
    from cbpt.server.deploy.settings import RaySettings
    from cbpt.server.scheduling.merging import MergeSettings

    settings = RaySettings(replicas=replicas, replica_cpus=REPLICA_CPUS, **ray)
    return deploy(recipe, settings, MergeSettings(max_queued_requests=max_queued), app_name=app_name)


@pytest.fixture(scope="session")
def one_replica(ray_session: Any, recipe: EngineRecipe) -> Iterator[RayServeBackend]:
    from ray import serve

    backend = deployed(recipe, "cbpt-one")
    yield backend
    serve.delete("cbpt-one")


@pytest.fixture(scope="session")
def one_replica_target(one_replica: RayServeBackend) -> Iterator[str]:
    """A plaintext loopback front whose backend is the one-replica deployment."""
    with serve_in_background(one_replica, plain_settings()) as target:
        yield target
