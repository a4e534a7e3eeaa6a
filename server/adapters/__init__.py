"""Server-side methods that turn a client's vector into soft prompts.

A new method is one module here, its class decorated with ``@register``, and one spec
(``AdapterSpec(method=...)``) naming it. The names below load lazily: specs and placements
import no torch, so settings validate them before the model loads; the built-in methods (none,
bbt, cbp) register themselves when adapters are first built, or when their modules are imported.
"""

from __future__ import annotations

import importlib
from typing import Any

from cbpt.common.lazy import lazy_exports

_EXPORTS = {
    "Adapter": "cbpt.server.adapters.base",
    "random_projection": "cbpt.server.adapters.base",
    "Placement": "cbpt.server.adapters.placement",
    "ADAPTER_METHODS": "cbpt.server.adapters.registry",
    "register": "cbpt.server.adapters.registry",
    "load_builtin_methods": "cbpt.server.adapters.registry",
    "AdapterSpec": "cbpt.server.adapters.spec",
    "build_adapters": "cbpt.server.adapters.spec",
    "ServedAdapters": "cbpt.server.adapters.served",
}
__all__ = list(_EXPORTS)


_lazy = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    """The registry of methods is looked up with the built-in methods registered."""
    value = _lazy(name)
    if name == "ADAPTER_METHODS":
        importlib.import_module("cbpt.server.adapters.registry").load_builtin_methods()
    return value
