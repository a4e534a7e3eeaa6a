"""What the served engine is built from: the ``engine``, ``adapters``, ``limits`` and ``text_cache``
sections of the server's settings, as one torch-free, picklable value.

``cbpt-server serve`` builds its engine from the recipe its settings hold; a front on the Ray
backend hands the same recipe to every replica instead, and each builds its engine by the same
``build``, so that it serves exactly the model, adapters and limits the front advertises (and
validates against) without the front itself loading a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cbpt.common.limits import Limits
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.adapters.spec import AdapterSpec
from cbpt.server.engine.batching import Batching

if TYPE_CHECKING:
    import torch

    from cbpt.server.engine.kv import TextStateCache
    from cbpt.server.engine.scoring import ScoringEngine
    from cbpt.server.model import ModelBundle

_SECTION = ConfigDict(frozen=True, extra="forbid")


class EngineSettings(BaseModel):
    """The ``engine`` section: the model, where it runs, and the engine's batching and memory knobs.

    A new ``ScoringEngine`` knob is one field here and one line in ``engine_options``.
    """

    model_config = _SECTION

    model: str = Field(
        "smollm2", description="bundled name, Hugging Face id or local folder (every replica reads it)"
    )
    model_cache_dir: Path | None = Field(None, description="where the converted model is cached")
    device: str = Field("auto", description="where the model runs: auto, cpu, cuda, cuda:1, ...")
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (default: one per core this process may use)"
    )
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="quantisation: none, or int8 (dynamic int8 Linear layers on CPU; opt-in, see the README)",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description=(
            "the weights' dtype: auto (float32 on CPU, bfloat16 on a GPU that supports it), float32, "
            "bfloat16 (opt-in on CPU: several times faster on CPUs with AMX, log-probs move by about "
            "0.1-0.2; see the README) or float16"
        ),
    )
    # One step of the scheduler is one forward pass, bounded by these: the bound on a tenant's turn.
    # Each default is the engine's own (``Batching``, engine/batching.py, which says why).
    batch_tokens: int = Field(
        Batching.batch_tokens, ge=1, description="padded new positions in one forward pass"
    )
    batch_cached_tokens: int = Field(
        Batching.batch_cached_tokens,
        ge=1,
        description="padded cached positions one forward pass attends over",
    )
    batch_sequences: int = Field(Batching.batch_sequences, ge=1, description="sequences in one forward pass")
    pack_rows: int = Field(
        Batching.pack_rows,
        ge=1,
        description="rows packed after one cached text in one sequence (1: no packing)",
    )
    encode_with_rows: bool = Field(
        Batching.encode_with_rows, description="encode a text not yet cached in its first rows' pass"
    )
    grouped_attention: bool = Field(
        Batching.grouped_attention, description="attend over the key/value heads without repeating them"
    )
    # Memory, all keys together (the per-key text-state cache is the text_cache section).
    token_cache_entries: int = Field(
        4096, ge=1, description="tokenised texts, choices and cues kept for reuse (all keys)"
    )
    token_cache_mb: int = Field(
        64, ge=1, description="memory for tokenised texts, choices and cues kept for reuse (all keys)"
    )
    job_state_mb: int = Field(
        256,
        ge=1,
        description=(
            "memory for the text states running jobs hold at once, all together (a window of texts each)"
        ),
    )

    @model_validator(mode="after")
    def _int8_converts_float32(self) -> EngineSettings:
        if self.quantize == "int8" and self.dtype not in ("auto", "float32"):
            raise ValueError(f"quantize int8 converts float32 weights: set dtype float32, not {self.dtype}")
        return self

    def engine_options(self) -> dict[str, Any]:
        """The ``ScoringEngine`` keyword arguments this section sets."""
        return {
            # Every ``Batching`` field this section declares (the others only switch optimisations off,
            # for benchmarks): a new batching knob is one field here.
            "batching": Batching(
                **{
                    f.name: getattr(self, f.name)
                    for f in fields(Batching)
                    if f.name in type(self).model_fields
                }
            ),
            "token_cache_size": self.token_cache_entries,
            "token_cache_bytes": self.token_cache_mb << 20,
            "max_state_bytes": self.job_state_mb << 20,
        }

    def load_model(self, dtype: torch.dtype | None = None) -> ModelBundle:
        """The model, converted and cached on first use, in ``dtype`` (None: this section's ``dtype``)."""
        from cbpt.server.model import DTYPES, load_model

        return load_model(
            self.model,
            cache_dir=self.model_cache_dir,
            device=self.device,
            dtype=dtype or DTYPES[self.dtype],
            threads=self.threads,
            quantize=self.quantize,
        )


class TextCacheSettings(BaseModel):
    """The ``text_cache`` section: the bounds of the engine's per-key cache of encoded texts."""

    model_config = _SECTION

    text_cache_mb_per_key: int = Field(
        256, ge=0, description="memory for one API key's cached text states (after-text adapters)"
    )
    text_cache_mb: int = Field(1024, ge=0, description="memory for all keys' cached text states together")
    text_cache_keys: int = Field(8, ge=1, description="API keys whose text states are kept at once")

    def build(self) -> TextStateCache:
        from cbpt.server.engine.kv import TextStateCache

        return TextStateCache(
            self.text_cache_mb_per_key << 20, self.text_cache_keys, self.text_cache_mb << 20
        )


class EngineRecipe(BaseModel):
    """Everything the engine is built from, here or on every replica."""

    model_config = _SECTION

    engine: EngineSettings = Field(default_factory=EngineSettings)
    adapters: ServedAdapters = Field(default_factory=ServedAdapters)
    limits: Limits = Field(default_factory=Limits)
    text_cache: TextCacheSettings = Field(default_factory=TextCacheSettings)

    def build(self, defer: Callable[[AdapterSpec], bool] | None = None) -> ScoringEngine:
        """Load the model and build the served adapters (the slow step: seconds with a warm cache);
        ``defer`` leaves out the adapters a replica loads on demand."""
        from cbpt.server.runtime import build_engine

        return build_engine(self, defer)
