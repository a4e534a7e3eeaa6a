"""Optimizer families by name: ``cma`` and ``ng:<any nevergrad optimizer>``.

A family registers once (a duplicate name fails at import time); errors list
the known names.
"""

from __future__ import annotations

from collections.abc import Callable

from cbpt.client.errors import ConfigError
from cbpt.client.optimizers.base import Optimizer, OptimizerConfig

# A family factory gets the part after "family:" (None for a bare name) and the config.
Factory = Callable[[str | None, OptimizerConfig], Optimizer]

_FAMILIES: dict[str, tuple[Factory, str]] = {}


def register(family: str, example: str) -> Callable[[Factory], Factory]:
    """Register ``family``; ``example`` is how it is spelled in help and error messages."""

    def decorate(factory: Factory) -> Factory:
        if family in _FAMILIES:
            raise RuntimeError(f"optimizer family {family!r} is already registered")
        _FAMILIES[family] = (factory, example)
        return factory

    return decorate


def known_names() -> list[str]:
    return [example for _, example in _FAMILIES.values()]


def make_optimizer(name: str, config: OptimizerConfig) -> Optimizer:
    """Build the optimizer ``name`` ("cma", "ng:NGOpt", ...)."""
    family, _, variant = name.partition(":")
    entry = _FAMILIES.get(family)
    if entry is None:
        raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(known_names())}")
    if config.popsize < 1 or config.dimension < 1:
        raise ConfigError(f"optimizer {name!r} needs popsize >= 1 and dimension >= 1")
    return entry[0](variant or None, config)
