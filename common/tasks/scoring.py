"""How the server scores a choice: by its first token, or by the sum over all its tokens.

One type for both sides: tasks, the SDK, both serde modules (which map it to the wire enum) and the
engine all use ``ScoringMode``. It is a ``str`` enum, so a task file or a caller may spell it as its
value (``mode: full_choice``) and it is written back the same way.
"""

from __future__ import annotations

from enum import Enum


class ScoringMode(str, Enum):
    """How a choice is scored: its first token (a verbalizer), or the sum over all its tokens."""

    FIRST_TOKEN = "first_token"
    FULL_CHOICE = "full_choice"

    def __str__(self) -> str:
        return self.value
