"""Any optimizer in nevergrad's registry, as ``ng:<name>`` (e.g. ng:NGOpt, ng:OnePlusOne, ng:DiagonalCMA).

The search space is an ``ng.p.Array`` of the adapter's dimension starting at 0
with mutation scale ``sigma0``, seeded through its own ``random_state``. Each
generation asks ``popsize`` candidates (``num_workers=popsize``), so the whole
population is scored in one request, and tells each its loss.
"""

from __future__ import annotations

import difflib
import hashlib
from typing import Any

import numpy as np

from cbpt.client.errors import ConfigError
from cbpt.client.optimizers.base import Optimizer, OptimizerConfig
from cbpt.client.optimizers.registry import register


class NevergradOptimizer(Optimizer):
    def __init__(self, variant: str, config: OptimizerConfig) -> None:
        import nevergrad as ng  # deferred: importing nevergrad costs seconds and only tuning needs it

        super().__init__(config)
        if config.include_recommendation:
            # nevergrad recommends the point it has told most often, so re-offering its recommendation
            # as a sample would pin it at the start point; CMA-ES has a mean that moves.
            raise ConfigError("select_from='mean' needs the 'cma' optimizer, not a nevergrad one")
        registry = ng.optimizers.registry
        if variant not in registry:
            close = difflib.get_close_matches(variant, list(registry), n=5)
            hint = f"did you mean {', '.join('ng:' + name for name in close)}?" if close else "e.g. ng:NGOpt"
            raise ConfigError(f"unknown nevergrad optimizer {variant!r} ({len(registry)} known; {hint})")
        self.name = f"ng:{variant}"
        self._parametrization = ng.p.Array(init=np.zeros(config.dimension)).set_mutation(sigma=config.sigma0)
        self._parametrization.random_state = np.random.RandomState(config.seed)
        self._optimizer = registry[variant](
            parametrization=self._parametrization, budget=config.budget, num_workers=config.popsize
        )
        self._pending: list[Any] = []
        self._asked: np.ndarray | None = None

    def ask(self) -> np.ndarray:
        self._pending = [self._optimizer.ask() for _ in range(self.popsize)]
        self._asked = np.stack([np.asarray(p.value, dtype=np.float64) for p in self._pending])
        return self._asked.copy()

    def tell(self, candidates: np.ndarray, losses: np.ndarray) -> None:
        losses = self._check_told(candidates, losses, self._asked)
        for parameter, loss in zip(self._pending, losses, strict=True):
            self._optimizer.tell(parameter, float(loss))
        self._pending, self._asked = [], None

    def state(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, cached = self._parametrization.random_state.get_state()
        return {
            "family": "ng",
            "name": self.name,
            "asked": int(self._optimizer.num_ask),
            "told": int(self._optimizer.num_tell),
            "rng": {
                "kind": kind,
                "keys_sha256": hashlib.sha256(np.asarray(keys).tobytes()).hexdigest(),
                "position": int(position),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
        }


@register("ng", "ng:<name> (any nevergrad optimizer, e.g. ng:NGOpt, ng:OnePlusOne, ng:DiagonalCMA)")
def _make(variant: str | None, config: OptimizerConfig) -> Optimizer:
    if not variant:
        raise ConfigError("optimizer 'ng' needs a name: ng:<name>, e.g. ng:NGOpt")
    return NevergradOptimizer(variant, config)
