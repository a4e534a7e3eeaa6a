"""Optional blurring of the returned log-probs: the provider's protection against extraction.

A client learns about the model only through the log-probs it gets back. Rounding them
(``--score-decimals``) and adding Gaussian noise (``--score-noise``, a standard deviation in
nats, renormalised over the choices afterwards) make each answer say less, at a cost in tuning
accuracy that the accuracy benchmark measures (``--score-noise`` there).

Noise drawn afresh per cell would average away: 512 copies of one text in one call, or one query
sent 512 times, would cut its error by sqrt(512), about 23. So each cell's noise is a
deterministic function of the tenant, the time window (``window_seconds``, a day by default), the
adapter, mode and cue, the candidate vector, the text and the choice string, keyed by a server
secret (HMAC-SHA256; fresh at every start unless ``seed`` fixes it for benchmarks and tests):
asking again, in the same call or another, returns the same noise. What it cannot stop is
averaging over *different* queries whose true answers are nearly equal (a text with one more
space); the budgets (budgets.py), charged per scored sequence, bound that. This runs after the
engine, on the answer only: the engine's numbers are untouched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from cbpt.server.engine.types import ScoreRequest, ScoreResult

DAY = 86400.0
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass
class ScoreProtection:
    decimals: int | None = None
    noise: float = 0.0
    seed: int | None = None  # None: a fresh secret (a fixed seed is for benchmarks and tests)
    window_seconds: float = DAY  # the noise of one query stays the same within a window
    clock: Callable[[], float] = field(default=time.time, repr=False)

    def __post_init__(self) -> None:
        if self.seed is None:
            self._secret = os.urandom(32)
        else:
            self._secret = hashlib.sha256(b"cbpt-score-noise:%d" % self.seed).digest()

    @property
    def active(self) -> bool:
        return self.decimals is not None or self.noise > 0

    def apply(
        self, result: ScoreResult, request: ScoreRequest | None = None, tenant: str = ""
    ) -> ScoreResult:
        """The answer the tenant gets; noise needs the request it answers (what seeds each cell)."""
        if not self.active:
            return result
        log_probs = np.array(result.log_probs, dtype=np.float64)  # [candidates, examples, choices]
        real = np.isfinite(log_probs)
        if self.noise > 0:
            if request is None:
                raise ValueError("score noise is seeded by the request: pass the request it answers")
            draws = self.standard_normal(request, tenant, log_probs.shape)
            noisy = np.where(real, log_probs + self.noise * draws, -np.inf)
            top = noisy.max(axis=-1, keepdims=True)
            log_probs = noisy - (top + np.log(np.exp(noisy - top).sum(axis=-1, keepdims=True)))
        if self.decimals is not None:
            log_probs = np.where(real, np.round(log_probs, self.decimals), -np.inf)
        return replace(result, log_probs=log_probs.astype(np.float32))

    def standard_normal(self, request: ScoreRequest, tenant: str, shape: tuple[int, ...]) -> np.ndarray:
        """One N(0, 1) draw per (candidate, example, choice) cell, the same for the same query."""
        window = int(self.clock() // self.window_seconds)
        context = _join(
            b"cell", struct.pack(">q", window), tenant.encode(), request.adapter.encode(),
            request.mode.name.encode(), request.cue.encode(),
        )  # fmt: skip
        candidates = np.asarray(request.candidates, dtype=np.float32).reshape(len(request.candidates), -1)
        per_candidate = [hashlib.sha256(row.tobytes()).digest() for row in candidates]
        per_text = [hashlib.sha256(text.encode("utf-8")).digest() for text in request.texts]
        cells = np.array(
            [[self._word(context, c, t) for t in per_text] for c in per_candidate], dtype=np.uint64
        ).reshape(len(per_candidate), len(per_text), 1)
        choice_words = np.zeros((len(request.texts), shape[-1]), dtype=np.uint64)
        for example, names in enumerate(request.choices.expand(len(request.texts))):
            for k, name in enumerate(names):
                choice_words[example, k] = self._word(b"choice", name.encode("utf-8"))
        mixed = cells ^ choice_words[None, :, :]
        first, second = _unit(_splitmix(mixed)), _unit(_splitmix(mixed ^ np.uint64(0x5DEECE66D)))
        return np.sqrt(-2.0 * np.log(first)) * np.cos(2.0 * np.pi * second)  # Box-Muller

    def _word(self, *parts: bytes) -> int:
        digest = hmac.new(self._secret, _join(*parts), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big")


def _join(*parts: bytes) -> bytes:
    """Length-prefixed, so no two different tuples of parts give the same bytes."""
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, vectorised: a bijective mix of 64-bit words (the keyed part is the HMAC)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return z ^ (z >> np.uint64(31))


def _unit(z: np.ndarray) -> np.ndarray:
    """A uniform in (0, 1) from the top 53 bits (never 0, so the logarithm is finite)."""
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
