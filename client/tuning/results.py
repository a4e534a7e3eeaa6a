"""What a tuning run reports: why it stopped, one row per generation, the best candidate so far, and the
final result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np


class StopReason(str, Enum):
    """Why a run stopped (or that it has not): every value in one place.

    The values are the strings run folders (``task.json``), checkpoints, ``cbpt tune --json`` and
    ``cbpt show`` have always held, so users' scripts and earlier files keep reading the same words.
    """

    BUDGET = "budget"  # every generation the budget pays for has run
    PATIENCE = "patience"  # ``patience`` dev evaluations without a better dev score
    NO_VECTOR = "no-vector"  # a dimension-0 adapter ("none"): scored once, nothing to tune
    RUNNING = "running"  # not stopped: ``Tuner.result_so_far`` while generations of the budget remain
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM or an error ended ``cbpt tune`` early (run folders only)

    def __str__(self) -> str:  # the bare word in f-strings and tables, on every Python version
        return self.value

    @classmethod
    def parse(cls, word: object, field: str) -> StopReason:
        """The stop reason a file names; another word raises ValueError naming ``field`` and the known."""
        try:
            return cls(word)
        except ValueError:
            known = ", ".join(reason.value for reason in cls)
            raise ValueError(f"{field}: unknown stop reason {word!r}; known: {known}") from None


@dataclass(frozen=True)
class HistoryRow:
    """One generation, as the progress bar, history.jsonl and curve.png show it."""

    generation: int
    calls_used: int  # candidate evaluations on the train set so far
    best_loss: float  # lowest train loss in this generation
    mean_loss: float
    train_accuracy: float  # of the candidate this generation offers to dev selection (select_from)
    dev_accuracy: float | None  # of that candidate, when evaluated
    wall_seconds: float  # this generation
    elapsed_seconds: float  # since the run (or its resume) started, summed over generations

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> HistoryRow:
        values: dict[str, Any] = {name: row.get(name) for name in cls.__dataclass_fields__}
        return cls(**values)


@dataclass(frozen=True)
class Candidate:
    """A candidate a generation offered to the dev selection, as the tuner keeps the best of them.

    Its JSON is the checkpoint's ``best`` entry, in the shape checkpoints have always had
    (``vector`` and ``bias`` as lists of floats, ``dev_accuracy`` beside ``dev_metrics``).
    """

    generation: int | None  # None for a dimension-0 adapter, which runs no generation
    vector: np.ndarray  # float32 [dimension], exactly what the server scored
    bias: np.ndarray | None  # float64 [choices], fitted on the client
    train_loss: float
    dev_metrics: dict[str, Any] | None  # accuracy, macro_f1, confusion_matrix, loss; None if not evaluated

    @property
    def dev_accuracy(self) -> float | None:
        return None if self.dev_metrics is None else float(self.dev_metrics["accuracy"])

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "vector": self.vector.tolist(),
            "bias": None if self.bias is None else self.bias.tolist(),
            "train_loss": self.train_loss,
            "dev_accuracy": None if self.dev_metrics is None else self.dev_metrics["accuracy"],
            "dev_metrics": self.dev_metrics,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Candidate:
        generation, bias, dev_metrics = entry.get("generation"), entry["bias"], entry.get("dev_metrics")
        if dev_metrics is None and entry.get("dev_accuracy") is not None:  # an entry with the accuracy alone
            dev_metrics = {"accuracy": entry["dev_accuracy"]}
        return cls(
            generation=None if generation is None else int(generation),
            vector=np.asarray(entry["vector"], dtype=np.float32),
            bias=None if bias is None else np.asarray(bias, dtype=np.float64),
            train_loss=float(entry["train_loss"]),
            dev_metrics=None if dev_metrics is None else dict(dev_metrics),
        )


@dataclass(frozen=True)
class TuningResult:
    """The chosen vector (best dev accuracy, ties to lower train loss) and how it was found."""

    vector: np.ndarray  # float32 [dimension], exactly what the server scored
    bias: np.ndarray | None  # float64 [choices], applied on the client at prediction
    history: tuple[HistoryRow, ...]
    dev_metrics: dict[str, Any] | None  # accuracy, macro_f1, confusion_matrix of the chosen vector
    train_loss: float
    calls_used: int
    stop_reason: StopReason
    adapter: str
    optimizer: str
    model_id: str
    model_fingerprint: str
    task: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)  # loss, seed, popsize, sigma0, budget, ...

    @property
    def dev_accuracy(self) -> float | None:
        return None if self.dev_metrics is None else float(self.dev_metrics["accuracy"])
