"""The registry of adapter methods: a new method is one module with one ``@register`` line.

Served adapters are then built from specs (spec.py) by method name, so the runtime never names a
method class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from cbpt.common.registry import Registry

if TYPE_CHECKING:
    from cbpt.server.adapters.base import Adapter

ADAPTER_METHODS: Registry[type[Adapter]] = Registry("adapter method")

A = TypeVar("A", bound="type[Adapter]")


def load_builtin_methods() -> None:
    """Import the built-in methods (none, bbt, cbp), which registers them; idempotent."""
    from cbpt.server.adapters import bbt, cbp, none

    del bbt, cbp, none


def register(cls: A) -> A:
    """Add an adapter class under its ``method`` name; a duplicate name fails at import time."""
    ADAPTER_METHODS.register(cls.method, cls)
    return cls
