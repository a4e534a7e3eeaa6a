"""Assembles a ScoringEngine from a model spec and adapter settings (no transport here)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cbpt.server.adapters import Placement
from cbpt.server.adapters.bbt import BlackBoxTuning
from cbpt.server.adapters.cbp import CustomizedBlackBoxPrompt
from cbpt.server.adapters.none import NoPrompt
from cbpt.server.engine import ScoringEngine
from cbpt.server.limits import Limits
from cbpt.server.model import ModelBundle, load_model


def embedding_std(bundle: ModelBundle) -> float:
    return float(bundle.model.get_input_embeddings().weight.float().std())


def build_adapters(
    bundle: ModelBundle,
    *,
    bbt_dimension: int = 500,
    prompt_length: int = 10,
    projection_seed: int = 0,
    generators: Sequence[Path] = (),
) -> list:
    """The adapters a server offers: zero-shot, BBT in both placements, one CBP adapter per generator."""
    std = embedding_std(bundle)
    adapters = [NoPrompt()]
    placements = (
        ("bbt", Placement.PREFIX),
        ("bbt-suffix", Placement.BEFORE_CUE),
        ("bbt-cue", Placement.ON_CUE),
    )
    for name, placement in placements:
        adapters.append(
            BlackBoxTuning(
                bundle.hidden_size,
                std,
                name=name,
                dimension=bbt_dimension,
                prompt_length=prompt_length,
                seed=projection_seed,
                placement=placement,
            )
        )
    adapters += [
        CustomizedBlackBoxPrompt.from_folder(Path(folder), bundle.fingerprint) for folder in generators
    ]
    return adapters


def build_engine(
    model: str = "smollm2",
    *,
    cache_dir: Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    quantize: str = "none",
    bbt_dimension: int = 500,
    prompt_length: int = 10,
    projection_seed: int = 0,
    generators: Sequence[Path] = (),
    limits: Limits | None = None,
    batch_sequences: int = 64,
) -> ScoringEngine:
    bundle = load_model(model, cache_dir=cache_dir, device=device, threads=threads, quantize=quantize)
    adapters = build_adapters(
        bundle,
        bbt_dimension=bbt_dimension,
        prompt_length=prompt_length,
        projection_seed=projection_seed,
        generators=generators,
    )
    return ScoringEngine(bundle, adapters, limits, batch_sequences=batch_sequences)
