"""Assembles a ScoringEngine from a model spec and adapter specs (no transport here)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cbpt.server.adapters import Adapter, AdapterSpec, build_adapters, default_specs, generator_specs
from cbpt.server.engine.limits import Limits
from cbpt.server.engine.scoring import ScoringEngine
from cbpt.server.model import ModelBundle, load_model


def served_specs(
    adapters: Sequence[AdapterSpec] | None = None,
    *,
    bbt_dimension: int = 500,
    prompt_length: int = 10,
    projection_seed: int = 0,
    generators: Sequence[Path] = (),
) -> list[AdapterSpec]:
    """The operator's specs (or the defaults: zero-shot and BBT in three placements), then one
    ``cbp`` adapter per generator folder."""
    base = list(adapters) if adapters else default_specs(bbt_dimension, prompt_length, projection_seed)
    return base + generator_specs(generators)


def default_adapters(bundle: ModelBundle, **specs: Any) -> list[Adapter]:
    """The adapters ``served_specs(**specs)`` names, built on ``bundle`` (tests and benchmarks)."""
    return build_adapters(bundle, served_specs(**specs))


def build_engine(
    model: str = "smollm2",
    *,
    specs: Sequence[AdapterSpec] | None = None,
    cache_dir: Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    quantize: str = "none",
    limits: Limits | None = None,
    batch_sequences: int = 64,
) -> ScoringEngine:
    """Load the model, build the adapters ``specs`` name (default: ``served_specs()``), wrap an engine."""
    bundle = load_model(model, cache_dir=cache_dir, device=device, threads=threads, quantize=quantize)
    adapters = build_adapters(bundle, served_specs() if specs is None else specs)
    return ScoringEngine(bundle, adapters, limits, batch_sequences=batch_sequences)
