"""CBP generators a replica loads when a request names one, rather than all at start.

A provider with many domain generators cannot keep every one in every replica's memory. With
``generators_per_replica`` set, a replica starts with the other adapters only, describes the
generators from their cards (so clients see every adapter, and a generator for other weights is
refused at start, not mid-run), and loads one when a request names it; Ray Serve's
``@serve.multiplexed`` keeps the most recently used few per replica and routes requests for a
generator to replicas that hold it. A request holds its generator in the engine until it is
scored, so an eviction never pulls an adapter from under a queued request. No Ray here: the
replica (``replica.py``) wires this to the multiplexer.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cbpt.common.info import AdapterInfo
from cbpt.server.adapters.spec import AdapterSpec, check_unique_names
from cbpt.server.errors import ModelMismatch

if TYPE_CHECKING:
    from cbpt.server.adapters.base import Adapter
    from cbpt.server.engine.scoring import ScoringEngine
    from cbpt.server.engine.types import EngineInfo
    from cbpt.server.model import ModelBundle
    from cbpt.server.recipe import EngineRecipe


def is_generator(spec: AdapterSpec) -> bool:
    return spec.method == "cbp" and spec.generator is not None


def build_engine_on_demand(
    recipe: EngineRecipe, on_demand: bool
) -> tuple[ScoringEngine, OnDemandGenerators | None, EngineInfo]:
    """The recipe's engine, built as the in-process server builds it but, when ``on_demand``, with
    its generators left to load on demand; and the info that describes every adapter, loaded or
    not, in the order the recipe serves them."""
    if not on_demand:
        engine = recipe.build()
        return engine, None, engine.info()
    served: list[AdapterSpec] = []

    def deferred(spec: AdapterSpec) -> bool:  # sees every served spec, in order
        served.append(spec)
        return is_generator(spec)

    engine = recipe.build(defer=deferred)
    generators = OnDemandGenerators(
        engine.bundle, [spec for spec in served if is_generator(spec)], engine.adapters
    )
    info = engine.info()
    loaded, described = iter(info.adapters), iter(generators.descriptions())
    adapters = tuple(next(described) if is_generator(spec) else next(loaded) for spec in served)
    return engine, generators, dataclasses.replace(info, adapters=adapters)


class LoadedGenerator:
    """What the multiplexer caches for one generator; Serve calls ``__del__`` when its LRU drops it."""

    def __init__(self, owner: OnDemandGenerators, name: str, adapter: Adapter) -> None:
        self.owner = owner
        self.name = name
        self.adapter = adapter
        self.evicted = False

    def __del__(self) -> None:
        self.owner.evict(self)


class OnDemandGenerators:
    """The generator adapters of one replica: described at start, loaded into ``adapters`` (the
    engine's own mapping) on demand, and removed once evicted and no request holds them."""

    def __init__(
        self, bundle: ModelBundle, specs: Sequence[AdapterSpec], adapters: dict[str, Adapter]
    ) -> None:
        self._bundle = bundle
        self._adapters = adapters
        self._specs: dict[str, AdapterSpec] = {}
        self._descriptions: dict[str, AdapterInfo] = {}
        described = [_describe(spec, bundle.fingerprint) for spec in specs]
        check_unique_names([*adapters, *(name for name, _ in described)])
        for spec, (name, description) in zip(specs, described, strict=True):
            self._specs[name] = spec
            self._descriptions[name] = description
        self._holds: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.loads = 0  # generators built so far (a reload after eviction counts again)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._specs)

    def descriptions(self) -> tuple[AdapterInfo, ...]:
        return tuple(self._descriptions.values())

    def load(self, name: str) -> LoadedGenerator:
        """Build the generator adapter ``name`` on the replica's model (blocking: weights from disk)."""
        from cbpt.server.adapters.spec import build_adapters

        adapter = build_adapters(self._bundle, [self._specs[name]])[0]
        adapter = adapter.to(self._bundle.device, self._bundle.dtype)
        self.loads += 1
        return LoadedGenerator(self, name, adapter)

    @contextmanager
    def hold(self, loaded: LoadedGenerator) -> Iterator[None]:
        """Keep ``loaded`` in the engine's adapters while a request that names it is queued or scored."""
        with self._lock:
            self._holds[loaded.name] += 1
            self._adapters[loaded.name] = loaded.adapter
        try:
            yield
        finally:
            with self._lock:
                self._holds[loaded.name] -= 1
                self._drop_if_unused(loaded)

    def evict(self, loaded: LoadedGenerator) -> None:
        with self._lock:
            loaded.evicted = True
            self._drop_if_unused(loaded)

    def resident(self) -> list[str]:
        """Generators in the engine now (loaded and not yet dropped)."""
        with self._lock:
            return sorted(name for name in self._specs if name in self._adapters)

    def _drop_if_unused(self, loaded: LoadedGenerator) -> None:
        # Identity, not name: after a reload the engine holds a newer adapter of the same name.
        unused = loaded.evicted and self._holds[loaded.name] == 0
        if unused and self._adapters.get(loaded.name) is loaded.adapter:
            del self._adapters[loaded.name]


def _describe(spec: AdapterSpec, fingerprint: str) -> tuple[str, AdapterInfo]:
    """A generator's served name and description from its card, without loading its weights."""
    from cbpt.server.adapters.generator import GeneratorConfig, read_card

    folder = Path(spec.generator or "")
    config = GeneratorConfig.from_json(read_card(folder))
    if config.base_model_fingerprint != fingerprint:
        raise ModelMismatch(
            f"{folder}: generator was built for model {config.base_model_fingerprint[:12]}, "
            f"this server runs {fingerprint[:12]}"
        )
    name = spec.name or (f"cbp-{config.domain}" if config.domain else "cbp")
    description = AdapterInfo(
        name,
        "cbp",
        config.dimension,
        config.prompt_length,
        config.domain,
        config.description or "CBP-Tuning prompt generator",
        config.placement,
    )
    return name, description
