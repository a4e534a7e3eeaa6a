"""Assembles a ScoringEngine from a model spec and adapter specs (no transport here)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cbpt.server.adapters import Adapter, AdapterSpec, build_adapters
from cbpt.server.adapters.generator import CONFIG_FILE, WEIGHTS_FILE, mismatch, read_config
from cbpt.server.adapters.spec import served_specs
from cbpt.server.engine.batching import Batching
from cbpt.server.engine.kv import TextStateCache
from cbpt.server.engine.limits import Limits
from cbpt.server.engine.prepare import DEFAULT_TOKEN_CACHE_BYTES
from cbpt.server.engine.scoring import ScoringEngine
from cbpt.server.errors import GeneratorFormatError
from cbpt.server.model import ModelBundle, load_model

__all__ = ["build_engine", "chosen_specs", "default_adapters", "served_specs", "shipped_generator_specs"]

log = logging.getLogger(__name__)

# Generators trained by the provider for the default model, shipped as package data.
SHIPPED_GENERATORS = Path(__file__).resolve().parent / "generators"


def default_adapters(bundle: ModelBundle, **specs: Any) -> list[Adapter]:
    """The adapters ``served_specs(**specs)`` names, built on ``bundle`` (tests and benchmarks)."""
    return build_adapters(bundle, served_specs(**specs))


def shipped_generator_specs(
    fingerprint: str, folder: Path | None = None, hidden_size: int | None = None
) -> list[AdapterSpec]:
    """Specs of every generator folder shipped in the package (``<folder>/<domain>/``) that was trained
    for this model's weights: each is served as ``cbp-<domain>``.

    A shipped generator for other weights (or an unreadable folder) is skipped, logged, and listed by
    ``cbpt-server info`` with the reason (``EngineInfo.not_served``): the server may run any model. One
    given with ``--generator`` for other weights is refused, as a mistake.
    """
    return _scan_shipped(fingerprint, folder or SHIPPED_GENERATORS, hidden_size)[0]


def _scan_shipped(
    fingerprint: str, folder: Path, hidden_size: int | None
) -> tuple[list[AdapterSpec], list[tuple[str, str]]]:
    """(specs served, (folder name, why not) of each skipped): every subfolder holding a generator file."""
    specs: list[AdapterSpec] = []
    skipped: list[tuple[str, str]] = []
    found = {path.parent for name in (CONFIG_FILE, WEIGHTS_FILE) for path in folder.glob(f"*/{name}")}
    for generator in sorted(found):
        try:
            reason = mismatch(read_config(generator), fingerprint, hidden_size)
            code = "other-model"
        except GeneratorFormatError as error:
            reason, code = str(error).removeprefix(f"{generator}: "), "unreadable"
        if reason is None:
            specs.append(AdapterSpec(method="cbp", generator=generator))
            continue
        skipped.append((generator.name, reason))
        log.warning(
            "shipped generator not served",
            extra={"adapter": f"cbp-{generator.name}", "reason": code, "fingerprint": fingerprint[:16]},
        )
    return specs, skipped


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
    batching: Batching | None = None,
    text_states: TextStateCache | None = None,
    token_cache_bytes: int = DEFAULT_TOKEN_CACHE_BYTES,
    max_state_bytes: int = 256 << 20,
) -> ScoringEngine:
    """Load the model, build the adapters ``specs`` name (default: ``served_specs()``), wrap an engine
    (``text_states``: the bounded text-state cache; the default bounds when None; ``max_state_bytes``:
    the text states all running jobs hold at once)."""
    bundle = load_model(model, cache_dir=cache_dir, device=device, threads=threads, quantize=quantize)
    adapters = build_adapters(
        bundle, chosen_specs(bundle.fingerprint, specs, shipped_generators, bundle.hidden_size)
    )
    not_served = _scan_shipped(bundle.fingerprint, SHIPPED_GENERATORS, bundle.hidden_size)[1]
    return ScoringEngine(
        bundle,
        adapters,
        limits,
        batching=batching,
        text_states=text_states,
        not_served=tuple(not_served) if shipped_generators else (),
        token_cache_bytes=token_cache_bytes,
        max_state_bytes=max_state_bytes,
    )


def chosen_specs(
    fingerprint: str,
    specs: Sequence[AdapterSpec] | None = None,
    shipped_generators: bool = True,
    hidden_size: int | None = None,
) -> list[AdapterSpec]:
    """``specs`` (default: ``served_specs()``), then the shipped generators for these weights that
    ``specs`` does not already name: what ``build_engine`` serves, and what a replica serves."""
    chosen = served_specs() if specs is None else list(specs)
    if shipped_generators:
        given = {Path(spec.generator).resolve() for spec in chosen if spec.generator is not None}
        chosen += [
            s
            for s in shipped_generator_specs(fingerprint, hidden_size=hidden_size)
            if Path(s.generator or "").resolve() not in given
        ]
    return chosen
