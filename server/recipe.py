"""What the served engine is built from, as one torch-free, picklable value.

``cbpt-server serve`` builds its engine from the recipe its settings name; a front on the Ray
backend hands the same recipe to every replica instead, so that each replica serves exactly the
model, adapters and limits the front advertises (and validates against) without the front itself
loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cbpt.server.adapters.spec import AdapterSpec
from cbpt.server.engine.batching import Batching
from cbpt.server.engine.limits import Limits

if TYPE_CHECKING:
    from cbpt.server.engine.kv import TextStateCache
    from cbpt.server.engine.scoring import ScoringEngine
    from cbpt.server.model import ModelBundle


@dataclass(frozen=True)
class EngineRecipe:
    model: str = "smollm2"  # a bundled name, a Hugging Face id or a folder every replica can read
    specs: tuple[AdapterSpec, ...] | None = None  # None: served_specs()'s defaults
    shipped_generators: bool = True
    cache_dir: Path | None = None
    device: str = "auto"
    threads: int | None = None
    quantize: str = "none"
    limits: Limits = field(default_factory=Limits)
    batching: Batching = field(default_factory=Batching)  # how rows are cut into forward passes
    text_cache: tuple[int, int, int] | None = None  # bytes per key, keys, bytes in all; None: defaults
    token_cache_bytes: int = 64 << 20  # the tokenisation cache's bound (engine/prepare.py)
    job_state_bytes: int = 256 << 20  # text states all running jobs hold at once

    def text_states(self) -> TextStateCache | None:
        """The engine's bounded text-state cache (imports torch)."""
        if self.text_cache is None:
            return None
        from cbpt.server.engine.kv import TextStateCache

        per_key, keys, total = self.text_cache
        return TextStateCache(per_key, keys, total)

    def build(self) -> ScoringEngine:
        """Load the model and build the adapters (the slow step: seconds with a warm cache)."""
        from cbpt.server.runtime import build_engine

        return build_engine(
            self.model,
            specs=self.specs,
            shipped_generators=self.shipped_generators,
            cache_dir=self.cache_dir,
            device=self.device,
            threads=self.threads,
            quantize=self.quantize,
            limits=self.limits,
            batching=self.batching,
            text_states=self.text_states(),
            token_cache_bytes=self.token_cache_bytes,
            max_state_bytes=self.job_state_bytes,
        )

    def load_model(self) -> ModelBundle:
        from cbpt.server.model import load_model

        return load_model(
            self.model,
            cache_dir=self.cache_dir,
            device=self.device,
            threads=self.threads,
            quantize=self.quantize,
        )

    def adapter_specs(self, fingerprint: str) -> list[AdapterSpec]:
        """The specs ``build`` serves on weights with this fingerprint (shipped generators included)."""
        from cbpt.server.runtime import chosen_specs

        return chosen_specs(fingerprint, self.specs, self.shipped_generators)
