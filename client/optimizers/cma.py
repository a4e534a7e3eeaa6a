"""CMA-ES through pycma's ask/tell, sampling from a dedicated seeded generator.

pycma draws its Gaussian samples through the ``randn`` option; giving it a
``numpy.random.Generator`` of our own keeps a run independent of global numpy
state, which is what makes replay (see base.py) exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cbpt.client.errors import ConfigError
from cbpt.client.optimizers.base import Optimizer, OptimizerConfig
from cbpt.client.optimizers.registry import register


class CMAOptimizer(Optimizer):
    name = "cma"

    def __init__(self, config: OptimizerConfig) -> None:
        import cma  # deferred: importing pycma costs a second and only tuning needs it

        super().__init__(config)
        self._rng = np.random.default_rng(config.seed)
        options = {
            "popsize": config.popsize,
            "seed": config.seed,
            "verbose": -9,
            "randn": lambda *shape: self._rng.standard_normal(shape),
        }
        self._es = cma.CMAEvolutionStrategy(np.zeros(config.dimension), config.sigma0, options)
        self._asked: np.ndarray | None = None

    def ask(self) -> np.ndarray:
        if self.config.include_recommendation:
            self._es.inject([self._es.mean], force=True)  # pycma returns injected solutions first
        self._asked = np.asarray(self._es.ask(), dtype=np.float64)
        return self._asked.copy()

    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        losses = self._check_told(candidates, losses, self._asked)
        assert self._asked is not None  # _check_told refuses a tell without an ask
        self._es.tell(list(self._asked), [float(loss) for loss in losses])
        self._asked = None

    def state(self) -> dict[str, Any]:
        return {
            "family": "cma",
            "iterations": int(self._es.countiter),
            "evaluations": int(self._es.countevals),
            "sigma": float(self._es.sigma),
            "rng": self._rng.bit_generator.state,
        }


@register("cma", "cma")
def _make(variant: str | None, config: OptimizerConfig) -> Optimizer:
    if variant is not None:
        raise ConfigError(f"optimizer 'cma' takes no variant, got 'cma:{variant}'")
    return CMAOptimizer(config)
