"""TunerSettings: what a tuning run is asked to do, checked once, saved with every checkpoint and result.

Settings are separate from run state (as in pycma's ``purecma``): a run's state lives
in its checkpoint, its settings here. ``to_json`` gives the keys the checkpoint config
and ``task.json`` have always held, so earlier checkpoints resume and earlier folders load.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from cbpt.client.errors import ConfigError, TunerWarning
from cbpt.common.losses import LOSSES

SELECTIONS = ("accuracy", "loss")  # what "best on dev" means
SELECT_FROM = ("best", "mean")  # which candidate of each generation the dev selection sees


@dataclass(frozen=True)
class TunerSettings:
    """One tuning run's settings.

    ``budget`` counts candidate evaluations on the train set (dev evaluations are
    extra); it is spent in whole generations of ``popsize``. ``patience`` stops
    after that many dev evaluations without a better dev score (``select_on``).
    ``select_from="mean"`` offers CMA-ES's mean to the dev selection instead of each
    generation's lowest-train-loss candidate.
    """

    adapter: str = "bbt"
    optimizer: str = "cma"  # "cma", or "ng:<name>" for any nevergrad optimizer
    budget: int = 200
    popsize: int = 20
    sigma0: float = 1.0
    loss: str = "ce"
    fit_bias: bool = False
    select_on: str = "accuracy"
    select_from: str = "best"
    dev_every: int = 1
    patience: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.select_on not in SELECTIONS:
            raise ConfigError(f"unknown select_on {self.select_on!r}; known: {', '.join(SELECTIONS)}")
        if self.select_from not in SELECT_FROM:
            raise ConfigError(f"unknown select_from {self.select_from!r}; known: {', '.join(SELECT_FROM)}")
        for name in ("popsize", "dev_every", "patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.sigma0 <= 0:
            raise ConfigError(f"sigma0 must be positive, got {self.sigma0}")
        if self.budget < self.popsize:
            raise ConfigError(f"budget {self.budget} is below one generation (popsize {self.popsize})")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every setting's name, in declaration order (also the order of JSON keys and resume flags)."""
        return tuple(field.name for field in fields(cls))

    @property
    def generations(self) -> int:
        """Whole generations the budget pays for."""
        return self.budget // self.popsize

    def replace(self, **changes: Any) -> TunerSettings:
        """These settings with some changed (checked again); an unknown name lists the known ones."""
        if unknown := sorted(set(changes) - set(self.names())):
            raise TypeError(f"unknown tuner setting {unknown[0]!r}; known: {', '.join(self.names())}")
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The settings by name, in declaration order (what checkpoints and task.json keep)."""
        return {name: getattr(self, name) for name in self.names()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TunerSettings:
        """Settings from ``to_json`` output; a missing key takes its default, an unknown one is ignored
        with a TunerWarning (a newer client may have written it)."""
        known = cls.names()
        if unknown := sorted(set(data) - set(known)):
            warnings.warn(f"ignoring unknown tuner settings {', '.join(unknown)}", TunerWarning, stacklevel=2)
        return cls(**{name: data[name] for name in known if name in data})
