"""Checks a ScoreRequest against the adapter and the limits before any model work.

Each failure raises InvalidRequest naming the offending field, e.g.
``candidates[3]: contains NaN or inf``, so a client can fix exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cbpt.common.choices import Choices
from cbpt.server.adapters import Adapter
from cbpt.server.engine.limits import Limits
from cbpt.server.errors import InvalidRequest


def check_candidates(candidates: np.ndarray, adapter: Adapter, limits: Limits) -> np.ndarray:
    array = np.asarray(candidates, dtype=np.float32)
    if array.ndim != 2:
        raise InvalidRequest(
            "candidates", f"expected a 2-D array [num_candidates, dimension], got {array.ndim}-D"
        )
    count, dimension = array.shape
    if count == 0:
        raise InvalidRequest("num_candidates", "must be at least 1")
    if count > limits.max_candidates:
        raise InvalidRequest("num_candidates", f"{count} exceeds the limit of {limits.max_candidates}")
    if dimension != adapter.dimension:
        raise InvalidRequest(
            "dimension", f"length {dimension}, expected {adapter.dimension} for adapter {adapter.name!r}"
        )
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InvalidRequest(f"candidates[{row}]", "contains NaN or inf")
    if array.size:
        largest = np.abs(array).max(axis=1)
        beyond = np.flatnonzero(largest > limits.max_candidate_abs)
        if beyond.size:
            row = int(beyond[0])
            raise InvalidRequest(
                f"candidates[{row}]",
                f"value {largest[row]:.6g} exceeds the bound of {limits.max_candidate_abs:g} in absolute value "
                "(max_candidate_abs): the soft prompt would only saturate the model",
            )
    return array


def check_texts(texts: Sequence[str], limits: Limits) -> None:
    if len(texts) == 0:
        raise InvalidRequest("texts", "at least one text is required")
    if len(texts) > limits.max_examples:
        raise InvalidRequest("texts", f"{len(texts)} examples exceed the limit of {limits.max_examples}")
    for index, text in enumerate(texts):
        if not text or not text.strip():
            raise InvalidRequest(f"texts[{index}]", "empty text")
        if len(text) > limits.max_text_chars:
            raise InvalidRequest(
                f"texts[{index}]", f"{len(text)} characters exceed the limit of {limits.max_text_chars}"
            )


def check_cue(cue: str, limits: Limits) -> None:
    if len(cue) > limits.max_text_chars:
        raise InvalidRequest("cue", f"{len(cue)} characters exceed the limit of {limits.max_text_chars}")


def check_choices(choices: Choices, num_texts: int, limits: Limits) -> None:
    """One shared list, or exactly one list per text, each within the limits."""
    if not choices.shared and len(choices.lists) != num_texts:
        raise InvalidRequest(
            "example_choices",
            f"{len(choices.lists)} choice lists for {num_texts} texts; give one shared list or one per text",
        )
    for index, options in enumerate(choices.lists):
        field = choices.field_of(index)
        if len(options) == 0:
            raise InvalidRequest(field, "at least one choice is required")
        if len(options) > limits.max_choices:
            raise InvalidRequest(field, f"{len(options)} choices exceed the limit of {limits.max_choices}")
        for position, option in enumerate(options):
            if not option:
                raise InvalidRequest(f"{field}[{position}]", "empty choice string")


def check_sequences(count: int, limits: Limits) -> None:
    if count > limits.max_sequences:
        raise InvalidRequest(
            "num_candidates",
            f"candidates x examples (x choices in full-choice mode) = {count} exceeds the limit of "
            f"{limits.max_sequences}; split the request",
        )
