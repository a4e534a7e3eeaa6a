"""Adapter specs: what an operator says to serve, and how each becomes an adapter.

A spec names the adapter, its method (a registered class), where its prompt goes and its sizes;
the method's ``from_spec`` builds it on the loaded model. This module imports no torch, so
settings can validate specs before the model loads. Which specs a server serves is
``served.ServedAdapters``'s answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from cbpt.server.adapters.placement import Placement
from cbpt.server.adapters.registry import ADAPTER_METHODS, load_builtin_methods
from cbpt.server.errors import AdapterSpecError

if TYPE_CHECKING:
    from cbpt.server.adapters.base import Adapter
    from cbpt.server.model import ModelBundle


class AdapterSpec(BaseModel):
    """One served adapter. ``name`` defaults to the method's own (``cbp-<domain>`` for a generator)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    name: str | None = None
    placement: Placement = Placement.PREFIX
    dimension: int = Field(500, ge=1)
    prompt_length: int = Field(10, ge=1)
    seed: int = 0
    generator: Path | None = None  # a trained generator folder (method cbp)
    description: str = ""


def build_adapters(bundle: ModelBundle, specs: Sequence[AdapterSpec]) -> list[Adapter]:
    """One adapter per spec, each built by its registered method; names must be unique."""
    load_builtin_methods()
    adapters: list[Adapter] = []
    for index, spec in enumerate(specs):
        if spec.method not in ADAPTER_METHODS:
            raise AdapterSpecError(
                f"adapters[{index}]: unknown adapter method {spec.method!r}; known: {ADAPTER_METHODS.known()}"
            )
        adapters.append(ADAPTER_METHODS[spec.method].from_spec(spec, bundle))
    check_unique_names([adapter.name for adapter in adapters])
    return adapters


def check_unique_names(names: Sequence[str]) -> None:
    """Served adapter names must be unique (a request names one); the one check and wording for the
    specs, the engine and a replica's on-demand generators alike."""
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise AdapterSpecError(f"adapter names must be unique; repeated: {', '.join(repeated)}")
