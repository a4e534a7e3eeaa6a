"""One small registry of named entries: adapter methods, optimizer families, data loaders.

As nevergrad's ``Registry``: registering a name twice is a programming error raised at import
time, and looking up an unknown name lists the known ones, so a typo is fixed from the message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from cbpt.common.errors import CbptError

T = TypeVar("T")


class DuplicateName(CbptError, ValueError):
    """A second entry under a name already registered."""


class UnknownName(CbptError, KeyError):
    """A name no entry is registered under; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Entries by name, in registration order; ``kind`` names them in messages ("adapter method")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, entry: T) -> T: ...
    def register(self, name: str, entry: T | None = None) -> T | Callable[[T], T]:
        """``registry.register(name, entry)``, or ``@registry.register(name)`` as a decorator."""

        def add(value: T) -> T:
            if name in self._entries:
                raise DuplicateName(f"{self.kind} {name!r} is already registered by {self._entries[name]!r}")
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests that register a throwaway one)."""
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {self.known()}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def known(self) -> str:
        return ", ".join(self._entries) or "none"
