"""What goes into and comes out of the engine, free of torch and of gRPC.

The merger, the service, serde and a Ray Serve front import these without loading a model. The
scoring mode and the adapter description are the ones both sides share (``cbpt.common``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cbpt.common.choices import Choices
from cbpt.common.info import AdapterInfo
from cbpt.common.limits import Limits
from cbpt.common.tasks.scoring import ScoringMode

__all__ = ["EngineInfo", "ScoreRequest", "ScoreResult", "ScoringMode"]  # ScoringMode: the shared one


@dataclass(frozen=True)
class ScoreRequest:
    adapter: str
    candidates: np.ndarray  # float32 [num_candidates, dimension]
    texts: Sequence[str]
    choices: Choices
    mode: ScoringMode = ScoringMode.FIRST_TOKEN
    # Shared answer cue after each text (e.g. "\nSentiment:"); after-text adapters put the prompt by it.
    cue: str = ""
    # Whose cache entries may be reused: the API key id. Keys never share cached text states.
    scope: str = ""

    def __post_init__(self) -> None:
        # Python callers may pass a list of strings (shared) or a list of lists (one per text).
        object.__setattr__(self, "choices", Choices.of(self.choices))
        object.__setattr__(self, "mode", ScoringMode(self.mode))

    @property
    def sequences(self) -> int:
        """Rows the request runs: candidates x examples (x choices in full-choice mode)."""
        per_candidate = len(self.texts)
        if self.mode is ScoringMode.FULL_CHOICE:
            per_candidate = sum(self.choices.counts(len(self.texts)))
        return max(1, len(self.candidates)) * per_candidate


@dataclass(frozen=True)
class ScoreResult:
    log_probs: np.ndarray  # [candidates, examples, max_choices], -inf pads
    choice_counts: tuple[int, ...]
    tokens_processed: int
    seconds: float


@dataclass(frozen=True)
class EngineInfo:
    model_id: str
    fingerprint: str
    hidden_size: int
    adapters: tuple[AdapterInfo, ...]
    limits: Limits
    # Generators shipped in the package but not served here, with why (trained for another model).
    not_served: tuple[tuple[str, str], ...] = ()
