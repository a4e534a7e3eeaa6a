"""Assembles a ScoringEngine from a model spec and adapter specs (no transport here)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cbpt.server.adapters import Adapter, AdapterSpec, build_adapters
from cbpt.server.adapters.generator import CONFIG_FILE
from cbpt.server.adapters.spec import served_specs
from cbpt.server.engine.kv import TextStateCache
from cbpt.server.engine.limits import Limits
from cbpt.server.engine.scoring import ScoringEngine
from cbpt.server.model import ModelBundle, load_model

__all__ = ["build_engine", "chosen_specs", "default_adapters", "served_specs", "shipped_generator_specs"]

log = logging.getLogger(__name__)

# Generators trained by the provider for the default model, shipped as package data.
SHIPPED_GENERATORS = Path(__file__).resolve().parent / "generators"


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
    max_state_bytes: int = 256 << 20,
) -> ScoringEngine:
    """Load the model, build the adapters ``specs`` name (default: ``served_specs()``), wrap an engine
    (``text_states``: the bounded text-state cache; the default bounds when None; ``max_state_bytes``:
    the text states all running jobs hold at once)."""
    bundle = load_model(model, cache_dir=cache_dir, device=device, threads=threads, quantize=quantize)
    adapters = build_adapters(bundle, chosen_specs(bundle.fingerprint, specs, shipped_generators))
    return ScoringEngine(
        bundle,
        adapters,
        limits,
        batch_sequences=batch_sequences,
        text_states=text_states,
        max_state_bytes=max_state_bytes,
    )


def chosen_specs(
    fingerprint: str, specs: Sequence[AdapterSpec] | None = None, shipped_generators: bool = True
) -> list[AdapterSpec]:
    """``specs`` (default: ``served_specs()``), then the shipped generators for these weights that
    ``specs`` does not already name: what ``build_engine`` serves, and what a replica serves."""
    chosen = served_specs() if specs is None else list(specs)
    if shipped_generators:
        given = {Path(spec.generator).resolve() for spec in chosen if spec.generator is not None}
        chosen += [
            s for s in shipped_generator_specs(fingerprint) if Path(s.generator or "").resolve() not in given
        ]
    return chosen
