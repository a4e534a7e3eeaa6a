"""A ``score_many`` call cut into steps of one forward pass each.

The model runs on one thread, so a call that runs to its end blocks every other call behind it,
and a call whose client went away keeps the model busy for nothing. A job runs one forward pass
(a chunk of at most ``batch_sequences`` rows, or one batch of cached-state encoding) per
``step``, so whoever drives it can interleave several jobs fairly and drop requests between
chunks. The computation itself is that of ``score_many``: the same chunks in the same order, so a
job that is never cancelled gives bit-identical scores however its steps were interleaved.
Nothing here knows about transport: ``cancel`` is a plain method any front end can call.
``CountJob`` is a CountTokens call cut the same way, so that tokenising takes turns too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import numpy as np
import torch

from cbpt.server.engine.types import ScoreRequest, ScoreResult
from cbpt.server.errors import CallCancelled, InvalidRequest

if TYPE_CHECKING:
    from cbpt.server.engine.prepare import Prepared
    from cbpt.server.engine.scoring import ScoringEngine

Outcome: TypeAlias = ScoreResult | InvalidRequest | CallCancelled
T = TypeVar("T")

# Characters a CountTokens job tokenises per step: about a tenth of a second on one CPU core, the
# order of one forward pass (512 texts of 4,096 characters take 1.7 s in one go).
COUNT_STEP_CHARS = 32 * 1024


def run_to_end(steps: Generator[int, None, T]) -> T:
    """Exhaust a generator of forward passes and return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


class ScoringJob:
    """Several requests scored step by step; ``outcomes()`` once ``step`` has returned False.

    ``step`` runs on the engine thread; ``cancel`` may be called from any thread (it only sets a
    flag, read before the next forward pass).
    """

    def __init__(self, engine: ScoringEngine, requests: Sequence[ScoreRequest]) -> None:
        self._engine = engine
        self.requests = list(requests)
        self._outcomes: list[Outcome | None] = [None] * len(self.requests)
        self._cancelled = [threading.Event() for _ in self.requests]
        self._steps: Iterator[int] = self._run()
        self.finished = False
        self.steps_done = 0  # forward passes run so far
        self.sequences_done = 0  # sequences those passes ran
        self.last_step_sequences = 0

    def cancel(self, index: int) -> None:
        """Drop request ``index``: its rows are left out from the next chunk on."""
        self._cancelled[index].set()

    def cancel_all(self) -> None:
        for flag in self._cancelled:
            flag.set()

    def cancelled(self, index: int) -> bool:
        return self._cancelled[index].is_set()

    def step(self) -> bool:
        """Run the next forward pass; False once the job has finished (then nothing was run)."""
        if self.finished:
            return False
        with self._engine.lock, torch.inference_mode():
            try:
                sequences = next(self._steps)
            except StopIteration:
                self.finished = True
                return False
        self.steps_done += 1
        self.sequences_done += sequences
        self.last_step_sequences = sequences
        return True

    def outcomes(self) -> list[Outcome]:
        """Per request: its scores, its validation error, or ``CallCancelled``."""
        if not self.finished:
            raise RuntimeError("the job has not finished; call step() until it returns False")
        return [outcome if outcome is not None else CallCancelled() for outcome in self._outcomes]

    def _run(self) -> Generator[int, None, None]:
        started = time.perf_counter()
        groups: dict[tuple, list[tuple[int, Prepared]]] = {}
        for index, request in enumerate(self.requests):
            try:
                prepared = self._engine.prepare(request)
            except InvalidRequest as error:
                self._outcomes[index] = error
                continue
            groups.setdefault(prepared.group_key, []).append((index, prepared))
        for members in groups.values():
            indices = [index for index, _ in members]
            scored = yield from self._group(members)
            if scored is None:
                continue
            for index, prepared, (log_probs, tokens) in zip(
                indices, (p for _, p in members), scored, strict=True
            ):
                if self.cancelled(index):
                    continue
                array = log_probs.numpy().astype(np.float32, copy=False)
                seconds = time.perf_counter() - started
                self._outcomes[index] = ScoreResult(array, prepared.choice_counts, tokens, seconds)

    def _group(
        self, members: list[tuple[int, Prepared]]
    ) -> Generator[int, None, list[tuple[torch.Tensor, int]] | None]:
        """One group's passes, ended early (None) once every request of it is cancelled."""
        indices = [index for index, _ in members]
        steps = self._engine.group_steps(
            [prepared for _, prepared in members], skip=lambda owner: self.cancelled(indices[owner])
        )
        while True:
            if all(self.cancelled(index) for index in indices):
                steps.close()
                return None
            try:
                sequences = next(steps)
            except StopIteration as done:
                return done.value
            yield sequences


class CountJob:
    """A ``CountTokens`` call as a job of steps for the scheduler, like a scoring job: tokenising a
    long list of long texts holds the engine thread too, so it takes turns with the other tenants'
    jobs, at most ``COUNT_STEP_CHARS`` characters a step, and stops early once cancelled."""

    def __init__(self, engine: ScoringEngine, texts: Sequence[str]) -> None:
        self._engine = engine
        self.texts = list(texts)
        self._counts: list[int] = []
        self._outcome: list[int] | InvalidRequest | CallCancelled | None = None
        self._cancelled = threading.Event()
        self.finished = False
        self.steps_done = 0
        self.last_step_sequences = 0

    def cancel(self, index: int) -> None:
        self._cancelled.set()

    def cancel_all(self) -> None:
        self._cancelled.set()

    def step(self) -> bool:
        """Tokenise the next texts; False once every text is counted (then nothing was run)."""
        if self.finished:
            return False
        if self._cancelled.is_set() or self._outcome is not None:
            self.finished = True
            return False
        prepare = self._engine.prepare
        with self._engine.lock:  # the texts were checked at the door (front/validation.py)
            start, chars = len(self._counts), 0
            for text in self.texts[start:]:
                self._counts.append(prepare.count_one(text))
                chars += len(text)
                if chars >= COUNT_STEP_CHARS:
                    break
        self.steps_done += 1
        self.last_step_sequences = 0  # no forward pass: nothing towards the sequence metrics
        if self._outcome is None and len(self._counts) == len(self.texts):
            self._outcome = self._counts
        return True

    def outcomes(self) -> list[list[int] | InvalidRequest | CallCancelled]:
        if not self.finished:
            raise RuntimeError("the job has not finished; call step() until it returns False")
        return [self._outcome if self._outcome is not None else CallCancelled()]
