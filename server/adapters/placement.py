"""Where a soft prompt goes among the input embeddings (torch-free: settings and specs name it)."""

from __future__ import annotations

from enum import Enum


class Placement(str, Enum):
    """Where the soft prompt goes among the input embeddings."""

    # Before the input text, as in BBT and the CBP-Tuning paper.
    PREFIX = "prefix"
    # After the input text, just before the answer cue: the text's keys and values do not
    # depend on the candidate, so the engine encodes each text once and reuses it.
    BEFORE_CUE = "before_cue"
    # Added to the answer cue's own token embeddings (the last prompt_length of them): nothing is
    # inserted, so z = 0 is exactly zero-shot, and texts are reused as for BEFORE_CUE.
    ON_CUE = "on_cue"
