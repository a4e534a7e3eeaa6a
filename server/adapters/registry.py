"""The registry of adapter methods: a new method is one module and one ``@register`` line."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cbpt.server.adapters.base import Adapter

ADAPTER_METHODS: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    """Add an adapter class under its ``method`` name; a duplicate name is a programming error."""
    if cls.method in ADAPTER_METHODS:
        raise ValueError(
            f"adapter method {cls.method!r} is already registered by {ADAPTER_METHODS[cls.method]}"
        )
    ADAPTER_METHODS[cls.method] = cls
    return cls


def adapter_class(method: str) -> type[Adapter]:
    try:
        return ADAPTER_METHODS[method]
    except KeyError:
        known = ", ".join(sorted(ADAPTER_METHODS))
        raise KeyError(f"unknown adapter method {method!r}; known: {known}") from None
