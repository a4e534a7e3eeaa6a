"""TunerSettings: what a tuning run is asked to do, checked once, saved with every checkpoint and result.

Settings are separate from run state (as in pycma's ``purecma``): a run's state lives
in its checkpoint, its settings here. ``to_json`` gives the keys the checkpoint config
and ``task.json`` have always held, so earlier checkpoints resume and earlier folders load.
Each field is one setting: ``cbpt tune``'s option of the same name is generated from it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from cbpt.client.errors import ConfigError, TunerWarning
from cbpt.common.losses import LOSSES

Selection = Literal["accuracy", "loss"]  # what "best on dev" means
SelectFrom = Literal["best", "mean"]  # which candidate of each generation the dev selection sees


class TunerSettings(BaseModel):
    """One tuning run's settings.

    ``budget`` counts candidate evaluations on the train set (dev evaluations are
    extra); it is spent in whole generations of ``popsize``. ``patience`` stops
    after that many dev evaluations without a better dev score (``select_on``).
    ``select_from="mean"`` offers CMA-ES's mean to the dev selection instead of each
    generation's lowest-train-loss candidate.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    adapter: str = Field(
        "bbt",
        description="server adapter to tune (see `cbpt info`), or auto: the served CBP generator best on "
        "dev at z = 0",
    )
    optimizer: str = Field("cma", description="the optimizer: cma, or ng:<name> for any nevergrad optimizer")
    budget: int = Field(200, description="candidate evaluations on the train set (with --resume: may grow)")
    popsize: int = Field(20, ge=1, description="candidates per generation (one request)")
    sigma0: float = Field(1.0, gt=0, description="initial step size")
    loss: str = Field("ce", description=f"the train loss: {', '.join(LOSSES)} (a name in LOSSES)")
    fit_bias: bool = Field(False, description="fit a per-choice bias on the client")
    select_on: Selection = Field(
        "accuracy", description="pick the vector by dev 'accuracy' or dev cross-entropy ('loss')"
    )
    select_from: SelectFrom = Field(
        "best",
        description="what each generation offers to the dev selection: its lowest-train-loss 'best' "
        "candidate, or CMA-ES's 'mean' (cma only)",
    )
    dev_every: int = Field(1, ge=1, description="evaluate on dev every N generations")
    patience: int | None = Field(None, ge=1, description="stop after N dev evaluations without gain")
    seed: int = Field(0, description="seed of the optimizer")

    def __init__(self, **values: Any) -> None:
        """Checked settings; a bad one is a ConfigError naming it, an unknown name a TypeError."""
        try:
            super().__init__(**values)
        except ValidationError as error:
            first = error.errors()[0]
            if first["type"] == "extra_forbidden":
                raise TypeError(
                    f"unknown tuner setting {first['loc'][0]!r}; known: {', '.join(self.names())}"
                ) from None
            raise ConfigError(_problem(first)) from None

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        if name not in LOSSES:  # a registry, not a Literal: a new loss is one entry in LOSSES
            raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
        return name

    @model_validator(mode="after")
    def _one_generation_at_least(self) -> TunerSettings:
        if self.budget < self.popsize:
            raise ValueError(f"budget {self.budget} is below one generation (popsize {self.popsize})")
        return self

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every setting's name, in declaration order (also the order of JSON keys and resume flags)."""
        return tuple(cls.model_fields)

    @property
    def generations(self) -> int:
        """Whole generations the budget pays for."""
        return self.budget // self.popsize

    def replace(self, **changes: Any) -> TunerSettings:
        """These settings with some changed (checked again); an unknown name lists the known ones."""
        if unknown := sorted(set(changes) - set(self.names())):
            raise TypeError(f"unknown tuner setting {unknown[0]!r}; known: {', '.join(self.names())}")
        return type(self)(**{**self.to_json(), **changes})

    def to_json(self) -> dict[str, Any]:
        """The settings by name, in declaration order (what checkpoints and task.json keep)."""
        return self.model_dump()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TunerSettings:
        """Settings from ``to_json`` output; a missing key takes its default, an unknown one is ignored
        with a TunerWarning (a newer client may have written it)."""
        known = cls.names()
        if unknown := sorted(set(data) - set(known)):
            warnings.warn(f"ignoring unknown tuner settings {', '.join(unknown)}", TunerWarning, stacklevel=2)
        return cls(**{name: data[name] for name in known if name in data})


def _problem(error: ErrorDetails) -> str:
    """One check's failure in the words earlier clients used, naming the setting."""
    name = str(error["loc"][0]) if error["loc"] else ""
    context, value = error.get("ctx", {}), error.get("input")
    if error["type"] == "literal_error":
        known = ", ".join(get_args(TunerSettings.model_fields[name].annotation))
        return f"unknown {name} {value!r}; known: {known}"
    if error["type"] == "greater_than_equal":
        return f"{name} must be at least {context['ge']}, got {value}"
    if error["type"] == "greater_than" and context.get("gt") == 0:
        return f"{name} must be positive, got {value}"
    if error["type"] == "value_error":  # our own checks' messages name the setting already
        return str(error["msg"]).removeprefix("Value error, ")
    return f"{name}: {error['msg']}" if name else str(error["msg"])
