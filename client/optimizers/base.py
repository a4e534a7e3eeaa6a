"""The optimizer interface, and resuming by replay instead of pickling.

An optimizer is rebuilt from its seed and every recorded generation is replayed:
``ask()`` must return candidates whose sha256 digest equals the recorded one,
then ``tell()`` gets the recorded losses. Nothing is ever unpickled, and a
checkpoint from another optimizer version or platform (whose arithmetic differs)
is detected at the first diverging generation instead of silently producing a
different run. Replay is deterministic because each optimizer draws only from
its own seeded generator, never from global state the tuner shares.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cbpt.client.errors import CheckpointError


@dataclass(frozen=True)
class OptimizerConfig:
    dimension: int
    popsize: int
    sigma0: float
    seed: int
    budget: int  # candidate evaluations the optimizer may plan for
    # Candidate 0 of every population is the optimizer's current estimate of the optimum (CMA-ES: its
    # mean), injected in place of one sample so a tuner can select it. Optimizers without one refuse it.
    include_recommendation: bool = False


class Optimizer(abc.ABC):
    """Ask a population, tell its losses; ``state()`` is a JSON-ready summary kept in checkpoints."""

    name: str

    def __init__(self, config: OptimizerConfig) -> None:
        self.config = config

    @property
    def popsize(self) -> int:
        return self.config.popsize

    @abc.abstractmethod
    def ask(self) -> np.ndarray:
        """The next population, float64 [popsize, dimension]."""

    @abc.abstractmethod
    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        """The losses [popsize] of the population the last ``ask`` returned."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """JSON-ready state (counters, step size, RNG state) that replay must reproduce exactly."""

    def _check_told(self, candidates: np.ndarray, losses: np.ndarray, asked: np.ndarray | None) -> np.ndarray:
        losses = np.asarray(losses, dtype=np.float64)
        if asked is None:
            raise RuntimeError("tell() without a matching ask()")
        if losses.shape != (len(asked),) or not np.array_equal(np.asarray(candidates), asked):
            raise ValueError("tell() needs the population of the last ask() and one loss per candidate")
        return losses


def candidates_digest(candidates: np.ndarray) -> str:
    """sha256 over the shape and the little-endian float64 bytes of a population."""
    array = np.ascontiguousarray(candidates, dtype="<f8")
    digest = hashlib.sha256(repr(array.shape).encode("ascii"))
    digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class GenerationRecord:
    """What a checkpoint keeps per generation to replay it: the asked digest and the told losses."""

    digest: str
    losses: tuple[float, ...]


def replay(optimizer: Optimizer, generations: Sequence[GenerationRecord]) -> np.ndarray | None:
    """Re-run ask/tell over recorded generations, verifying each digest; return the last population."""
    population = None
    for index, record in enumerate(generations):
        population = optimizer.ask()
        if candidates_digest(population) != record.digest:
            raise CheckpointError(
                f"generation {index}: the optimizer asked other candidates than the checkpoint recorded; "
                "it was written by another optimizer version or platform, or for other settings"
            )
        optimizer.tell(population, np.asarray(record.losses, dtype=np.float64))
    return population
