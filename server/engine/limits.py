"""Request limits, stated to clients by GetServerInfo and enforced by validation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_candidates: int = 64
    max_examples: int = 512
    max_choices: int = 16
    max_text_tokens: int = 512
    max_text_chars: int = 4096
    max_choice_tokens: int = 16
    # Per choice string, checked at the door before anything is tokenised: 16 tokens of a few
    # characters each, with room for long tokens (runs of spaces, punctuation).
    max_choice_chars: int = 256
    # candidates x examples (x choices in full-choice mode) in one request.
    max_sequences: int = 16384
    max_message_bytes: int = 16 * 1024 * 1024
    # Largest |value| in a candidate. CMA-ES from sigma0 = 1 stays within about +-10; a vector at
    # 1e3 already swamps the embeddings it is added to, so anything beyond is a broken optimizer.
    max_candidate_abs: float = 1000.0
