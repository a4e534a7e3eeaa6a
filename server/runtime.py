"""Assembles a ScoringEngine from a recipe (no transport here): the one path every server takes,
in process or on a Ray replica."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cbpt.server.adapters.spec import AdapterSpec, build_adapters
from cbpt.server.engine.scoring import ScoringEngine

if TYPE_CHECKING:
    from cbpt.server.recipe import EngineRecipe

__all__ = ["build_engine"]


def build_engine(recipe: EngineRecipe, defer: Callable[[AdapterSpec], bool] | None = None) -> ScoringEngine:
    """Load the recipe's model, build the adapters ``recipe.adapters`` serves (but those ``defer``
    picks: a replica loads those on demand) and wrap them in an engine with the recipe's limits,
    text-state cache and engine knobs."""
    bundle = recipe.engine.load_model()
    chosen = recipe.adapters.chosen(bundle.fingerprint, bundle.hidden_size)
    eager = [spec for spec in chosen.specs if defer is None or not defer(spec)]
    return ScoringEngine(
        bundle,
        build_adapters(bundle, eager),
        recipe.limits,
        text_states=recipe.text_cache.build(),
        not_served=chosen.not_served,
        **recipe.engine.engine_options(),
    )
