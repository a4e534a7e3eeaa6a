"""Package attributes loaded on first use: ``__getattr__ = lazy_exports(__name__, {name: module})``.

A package can then name its main classes while importing it stays cheap (the client stays free of
the libraries an unused module needs; the engine's request types stay free of torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` that imports ``exports[name]`` when ``name`` is first read."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
