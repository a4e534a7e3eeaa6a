"""The choice strings a request asks the model to score: one list for every text, or one per text.

Both sides and the wire use this one value, so "shared" is stated, never guessed from a length:
the SDK builds it, serde puts it in ``shared_choices`` or ``example_choices``, and the engine
encodes a shared list once. Errors name the wire field (``shared_choices[2]``, ``example_choices[7]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Choices:
    """``lists`` holds one list when ``shared``, else one list per example."""

    lists: tuple[tuple[str, ...], ...]
    shared: bool

    @classmethod
    def shared_by_all(cls, options: Sequence[str]) -> Choices:
        return cls((tuple(options),), shared=True)

    @classmethod
    def per_example(cls, lists: Sequence[Sequence[str]]) -> Choices:
        return cls(tuple(tuple(options) for options in lists), shared=False)

    @classmethod
    def of(cls, value: Choices | Sequence[str] | Sequence[Sequence[str]]) -> Choices:
        """A ``Choices`` from itself, one list of strings (shared) or a list of lists (one per example)."""
        if isinstance(value, Choices):
            return value
        items = list(value)
        if items and all(isinstance(item, str) for item in items):
            return cls.shared_by_all([str(item) for item in items])
        if any(isinstance(item, str) for item in items):
            raise TypeError("choices: give one list of strings, or one list of strings per example")
        return cls.per_example([tuple(item) for item in items])

    @property
    def field(self) -> str:
        return "shared_choices" if self.shared else "example_choices"

    def field_of(self, example: int) -> str:
        """The wire field holding ``example``'s list, as errors name it."""
        return "shared_choices" if self.shared else f"example_choices[{example}]"

    def of_example(self, example: int) -> tuple[str, ...]:
        return self.lists[0] if self.shared else self.lists[example]

    def expand(self, num_examples: int) -> list[tuple[str, ...]]:
        """One list per example (a shared list repeated)."""
        return list(self.lists) * num_examples if self.shared else list(self.lists)

    def counts(self, num_examples: int) -> list[int]:
        return [len(options) for options in self.expand(num_examples)]

    @property
    def width(self) -> int:
        """The most choices any example has."""
        return max((len(options) for options in self.lists), default=0)

    def take(self, examples: Sequence[int] | range | slice) -> Choices:
        """The choices of a subset of examples (a shared list stays shared)."""
        if self.shared:
            return self
        if isinstance(examples, slice):
            return Choices(self.lists[examples], shared=False)
        return Choices(tuple(self.lists[i] for i in examples), shared=False)
