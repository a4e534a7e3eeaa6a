"""What runs after every ``tell``: the tuner's own history, patience and checkpoint, then the caller's.

Callbacks attach the way nevergrad attaches its loggers (``optimizer.register_callback("tell", ...)``):
``tuner.register_callback("tell", callback)``. Each gets the tuner and the generation's history row;
the run so far is ``tuner.state`` (as a result: ``tuner.result_so_far()``). The tuner's own callbacks
run first, in the order below, so a registered one (the CLI's run recorder and progress bar, a
benchmark scoring the choice so far) sees the row recorded, the stop decided and the checkpoint
written. An exception from a callback ends the run where it stands; the checkpoint resumes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from cbpt.client.files.crypto import SecretKey
from cbpt.client.optimizers import Optimizer
from cbpt.client.tuning.checkpoint import Checkpoint, save_checkpoint
from cbpt.client.tuning.results import HistoryRow, StopReason

if TYPE_CHECKING:
    from cbpt.client.tuning.tuner import Tuner

Event = Literal["tell"]  # after each generation is told and its candidate offered to the dev selection
EVENTS: tuple[Event, ...] = ("tell",)


class TellCallback(Protocol):
    """``callback(tuner, row)`` after every ``tell``, the dimension-0 run's single scoring included."""

    def __call__(self, tuner: Tuner, row: HistoryRow, /) -> None: ...


def record_history(tuner: Tuner, row: HistoryRow) -> None:
    """The run's history: the rows the result, the checkpoint and the run folder hold."""
    tuner.state.history.append(row)


@dataclass(frozen=True)
class Patience:
    """Early stopping: stop after ``limit`` dev evaluations without a better dev score (``select_on``)."""

    limit: int

    def __call__(self, tuner: Tuner, row: HistoryRow) -> None:
        if tuner.state.stale >= self.limit:
            tuner.state.stop_reason = StopReason.PATIENCE


@dataclass(frozen=True)
class CheckpointWriter:
    """Seal the run's state after every generation, so a run stopped at any point resumes exactly."""

    path: Path
    key: SecretKey
    config: dict[str, Any]  # what a resume must match
    optimizer: Optimizer

    def __call__(self, tuner: Tuner, row: HistoryRow) -> None:
        checkpoint = Checkpoint(self.config, tuner.state, self.optimizer.state())
        save_checkpoint(self.path, checkpoint, self.key)
