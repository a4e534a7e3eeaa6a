"""A run's state: what it has done so far, and the dev selection that keeps its best candidate.

State is apart from settings (as in pycma's ``purecma``): ``TunerSettings`` say what a run is
asked to do, ``TuningState`` is what it has done. A checkpoint holds the state whole and a resume
restores it, so everything the next generation or the result depends on lives here.

Like BBT, the final vector is the one with the best dev accuracy (ties: lower train loss), because
the loss on a few dozen training examples is a poor guide to held-out accuracy; ``select_on="loss"``
uses the dev cross-entropy instead, which is less coarse than the accuracy of a dev set of a few
dozen examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cbpt.client.optimizers import GenerationRecord
from cbpt.client.tuning.results import Candidate, HistoryRow, StopReason


@dataclass
class TuningState:
    """A run so far: the generations to replay, their rows, the best candidate and why it stopped."""

    generations: list[GenerationRecord] = field(default_factory=list)  # what a resume replays
    history: list[HistoryRow] = field(default_factory=list)
    best: Candidate | None = None
    calls_used: int = 0
    stale: int = 0  # dev evaluations since the dev selection score last improved (what patience reads)
    stop_reason: StopReason | None = None  # set by a stop rule (patience, no vector); the budget is not

    def offer(self, candidate: Candidate, select_on: str) -> None:
        """Keep the better candidate: by its dev score when it has one (ties: lower train loss), by
        train loss alone while no candidate has one; count the dev evaluations that did not improve."""
        best = self.best
        score = dev_score(candidate, select_on)
        if score is None:
            if best is None or (best.dev_metrics is None and candidate.train_loss < best.train_loss):
                self.best = candidate
            return
        best_score = None if best is None else dev_score(best, select_on)
        improved = best_score is None or score > best_score
        tie = best is not None and score == best_score and candidate.train_loss < best.train_loss
        if improved or tie:
            self.best = candidate
        self.stale = 0 if improved else self.stale + 1


def dev_score(candidate: Candidate, select_on: str) -> float | None:
    """Higher is better: the dev accuracy, or minus the dev cross-entropy (``select_on="loss"``)."""
    dev = candidate.dev_metrics
    if dev is None:
        return None
    return float(dev["accuracy"]) if select_on == "accuracy" else -float(dev["loss"])
