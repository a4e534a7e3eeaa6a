"""How the server scores a choice: by its first token, or by the sum over all its tokens.

Spelled once here; tasks, the SDK and serde (which maps it to the wire enum) all use this name.
"""

from __future__ import annotations

from typing import Literal, get_args

ScoringModeName = Literal["first_token", "full_choice"]
SCORING_MODES: tuple[ScoringModeName, ...] = get_args(ScoringModeName)
