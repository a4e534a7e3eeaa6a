"""Request limits: what the server enforces and states in GetServerInfo, and what the client splits by.

One type for both sides. The server's values are the ``limits`` section of its settings
(validated: every limit is at least 1). A client reads a server's statement with ``stated``,
where a 0 (or a limit the server did not state) means "not stated" and is read as no limit.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

AtLeastOne = Annotated[int, Field(ge=1)]


class Limits(BaseModel):
    """Bounds on one request, checked once at the server's door, each refusal naming its field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_candidates: AtLeastOne = Field(64, description="candidate vectors in one request")
    max_examples: AtLeastOne = Field(512, description="texts in one request")
    max_choices: AtLeastOne = Field(16, description="choices per text")
    max_text_tokens: AtLeastOne = Field(512, description="tokens of one text")
    max_text_chars: AtLeastOne = Field(4096, description="characters of one text, checked before tokenising")
    max_choice_tokens: AtLeastOne = Field(16, description="tokens of one choice")
    # 16 tokens of a few characters each, with room for long tokens (runs of spaces, punctuation).
    max_choice_chars: AtLeastOne = Field(
        256, description="characters per choice string, checked before tokenising"
    )
    max_sequences: AtLeastOne = Field(
        16384, description="candidates x examples (x choices in full-choice mode) in one request"
    )
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="bytes of one request message")
    # CMA-ES from sigma0 = 1 stays within about +-10; a vector at 1e3 already swamps the embeddings
    # it is added to, so anything beyond is a broken optimizer.
    max_candidate_abs: float = Field(1000.0, gt=0, description="largest absolute value a candidate may hold")

    @classmethod
    def stated(cls, **values: Any) -> Limits:
        """Limits as a server stated them, unvalidated: a 0, or a limit left out, means "not stated"
        (no limit), as an older server's message reads."""
        return cls.model_construct(**{name: values.get(name, 0) for name in cls.model_fields})
