"""How the engine cuts its rows into forward passes: every batching knob, with its default, in one place.

An operator sets these in the settings' ``engine`` section (``server/recipe.py``); tests and benchmarks
override single fields (``ScoringEngine(..., batch_tokens=512)``). The defaults are what
benchmarks/throughput.py measured fastest on the bundled model on a 2-core CPU (docs/capacity.md):
passes of about a thousand new tokens keep the matmuls large enough while the activations stay in cache.
A GPU wants far larger passes: raise ``batch_tokens`` and ``batch_sequences`` there.
``Batching.before_issue_24()`` is the engine as it was before (chunks of 64 rows, each row its own
sequence, keys and values repeated per query head), kept so the benchmark can show the two side by side.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Batching:
    # Padded new positions one forward pass runs (sequences x the longest's new tokens): what its
    # matmuls cost. About a thousand keeps each layer's activations in a 2-core CPU's caches.
    batch_tokens: int = 1024
    # Padded cached positions one forward pass attends over (sequences x the longest cached state):
    # what the stacked keys and values of the pass hold (46 KB a position on SmolLM2 in fp32).
    batch_cached_tokens: int = 8192
    # Sequences one forward pass holds at most (a packed sequence is one text and the rows after it).
    batch_sequences: int = 256
    # Rows run after one cached text in one packed sequence (each sees the text and itself only). The
    # text's keys and values are then stacked once per sequence, not once per row; 1 is one sequence
    # per row, as before.
    pack_rows: int = 32
    # A text whose keys and values are not cached runs in the pass of its first rows and is cached
    # from it, instead of in a pass of its own first (one pass, no second copy of its states).
    encode_with_rows: bool = True
    # Grouped-query attention over the key/value heads as they are, instead of repeating them per
    # query head (which copies every cached state for every pass on CPU).
    grouped_attention: bool = True
    sort_by_length: bool = True  # False keeps request order: only to show what sorting buys
    reuse_text_states: bool = True  # each text encoded once per API key, reused by every candidate
    reuse_prefix_states: bool = True  # each candidate's input-independent prefix encoded once

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "batch_cached_tokens", "batch_sequences", "pack_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def before_issue_24(cls) -> Batching:
        """The engine's batching before issue #24, for side-by-side benchmarks."""
        return cls(
            batch_tokens=8192,
            batch_cached_tokens=8192,
            batch_sequences=64,
            pack_rows=1,
            encode_with_rows=False,
            grouped_attention=False,
        )
