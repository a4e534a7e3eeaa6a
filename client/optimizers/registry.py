"""Optimizer families by name: ``cma`` and ``ng:<any nevergrad optimizer>``.

A family registers once (a duplicate name fails at import time, as every
``cbpt.common.registry.Registry`` does); an unknown name lists how the known
families are spelled ("cma, ng:<name> ...").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cbpt.client.errors import ConfigError
from cbpt.client.optimizers.base import Optimizer, OptimizerConfig
from cbpt.common.registry import Registry

# A family factory gets the part after "family:" (None for a bare name) and the config.
Factory = Callable[[str | None, OptimizerConfig], Optimizer]


@dataclass(frozen=True)
class Family:
    """A registered family: how to build one, and how its names are spelled in help and errors."""

    factory: Factory
    example: str


FAMILIES: Registry[Family] = Registry("optimizer family")


def register(family: str, example: str) -> Callable[[Factory], Factory]:
    """Register ``family``; ``example`` is how it is spelled in help and error messages."""

    def decorate(factory: Factory) -> Factory:
        FAMILIES.register(family, Family(factory, example))
        return factory

    return decorate


def known_names() -> list[str]:
    return [FAMILIES[family].example for family in FAMILIES]


def make_optimizer(name: str, config: OptimizerConfig) -> Optimizer:
    """Build the optimizer ``name`` ("cma", "ng:NGOpt", ...)."""
    family, _, variant = name.partition(":")
    if family not in FAMILIES:
        raise ConfigError(f"unknown optimizer {name!r}; known: {', '.join(known_names())}")
    if config.popsize < 1 or config.dimension < 1:
        raise ConfigError(f"optimizer {name!r} needs popsize >= 1 and dimension >= 1")
    return FAMILIES[family].factory(variant or None, config)
