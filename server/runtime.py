"""Assembles a ScoringEngine from a model spec and adapter specs (no transport here)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cbpt.server.adapters import Adapter, AdapterSpec, build_adapters, default_specs, generator_specs
from cbpt.server.adapters.generator import CONFIG_FILE
from cbpt.server.engine.kv import TextStateCache
from cbpt.server.engine.limits import Limits
from cbpt.server.engine.scoring import ScoringEngine
from cbpt.server.model import ModelBundle, load_model

log = logging.getLogger(__name__)

# Generators trained by the provider for the default model, shipped as package data.
SHIPPED_GENERATORS = Path(__file__).resolve().parent / "generators"


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


def shipped_generator_specs(fingerprint: str, folder: Path = SHIPPED_GENERATORS) -> list[AdapterSpec]:
    """Specs of the generators shipped in the package that were trained for this model's weights.

    A shipped generator for other weights is skipped (the server may run any model); one given
    with ``--generator`` for other weights is refused, as a mistake.
    """
    specs = []
    for config in sorted(folder.glob(f"*/{CONFIG_FILE}")):
        card = json.loads(config.read_text(encoding="utf-8"))
        if card.get("base_model_fingerprint") == fingerprint:
            specs.append(AdapterSpec(method="cbp", generator=config.parent))
        else:
            log.info(
                "shipped generator skipped: trained for other weights",
                extra={"fingerprint": fingerprint[:16]},
            )
    return specs


def build_engine(
    model: str = "smollm2",
    *,
    specs: Sequence[AdapterSpec] | None = None,
    shipped_generators: bool = True,
    cache_dir: Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    quantize: str = "none",
    limits: Limits | None = None,
    batch_sequences: int = 64,
    text_states: TextStateCache | None = None,
) -> ScoringEngine:
    """Load the model, build the adapters ``specs`` name (default: ``served_specs()``), wrap an engine
    (``text_states``: the bounded text-state cache; the default bounds when None)."""
    bundle = load_model(model, cache_dir=cache_dir, device=device, threads=threads, quantize=quantize)
    chosen = served_specs() if specs is None else list(specs)
    if shipped_generators:
        given = {Path(spec.generator).resolve() for spec in chosen if spec.generator is not None}
        chosen += [
            s
            for s in shipped_generator_specs(bundle.fingerprint)
            if Path(s.generator or "").resolve() not in given
        ]
    adapters = build_adapters(bundle, chosen)
    return ScoringEngine(bundle, adapters, limits, batch_sequences=batch_sequences, text_states=text_states)
