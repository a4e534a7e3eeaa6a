"""Optional blurring of the returned log-probs: the provider's protection against extraction.

A client learns about the model only through the log-probs it gets back. Rounding them
(``--score-decimals``) and adding Gaussian noise (``--score-noise``, a standard deviation in
nats, renormalised over the choices afterwards) make each answer say less, at a cost in tuning
accuracy that the accuracy benchmark measures (``--score-noise`` there). Repeating a query
averages noise away, which is why the per-key budgets (budgets.py) matter too. This runs after
the engine, on the answer only: the engine's numbers are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cbpt.server.engine.types import ScoreResult


@dataclass
class ScoreProtection:
    decimals: int | None = None
    noise: float = 0.0
    seed: int | None = None  # None: fresh entropy (a fixed seed is for benchmarks and tests)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    @property
    def active(self) -> bool:
        return self.decimals is not None or self.noise > 0

    def apply(self, result: ScoreResult) -> ScoreResult:
        if not self.active:
            return result
        log_probs = np.array(result.log_probs, dtype=np.float64)  # [candidates, examples, choices]
        real = np.isfinite(log_probs)
        if self.noise > 0:
            noisy = np.where(real, log_probs + self._rng.normal(0.0, self.noise, log_probs.shape), -np.inf)
            top = noisy.max(axis=-1, keepdims=True)
            log_probs = noisy - (top + np.log(np.exp(noisy - top).sum(axis=-1, keepdims=True)))
        if self.decimals is not None:
            log_probs = np.where(real, np.round(log_probs, self.decimals), -np.inf)
        return replace(result, log_probs=log_probs.astype(np.float32))
