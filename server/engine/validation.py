"""Checks a ScoreRequest against the adapter and the limits before any model work.

Each failure raises InvalidRequest naming the offending field, e.g.
``candidates[3]: contains NaN or inf``, so a client can fix exactly that. The servicer runs
``check_request`` before a call is queued (serde runs the count checks on the wire message before
anything is copied out of it); the engine runs it again for its Python callers. Only the token
limits need the tokenizer, and prepare.py checks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from cbpt.common.choices import Choices
from cbpt.common.limits import Limits
from cbpt.server.adapters.placement import Placement
from cbpt.server.engine.types import ScoreRequest
from cbpt.server.errors import InvalidRequest


class AdapterShape(Protocol):
    """What validation needs of an adapter: an engine ``Adapter`` or the front's ``AdapterDescription``."""

    @property
    def name(self) -> str: ...
    @property
    def dimension(self) -> int: ...
    @property
    def placement(self) -> str: ...


def check_request(request: ScoreRequest, adapter: AdapterShape, limits: Limits) -> np.ndarray:
    """Every limit but the token counts; returns the candidates as float32."""
    candidates = check_candidates(request.candidates, adapter, limits)
    check_texts(request.texts, limits)
    check_cue(request.cue, limits)
    check_choices(request.choices, len(request.texts), limits)
    check_sequences(request.sequences, limits)
    if adapter.placement == Placement.ON_CUE and not request.cue:
        raise InvalidRequest("cue", f"adapter {adapter.name!r} adds its prompt onto the answer cue; give one")
    return candidates


def check_candidates(candidates: np.ndarray, adapter: AdapterShape, limits: Limits) -> np.ndarray:
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


def check_text_count(count: int, limits: Limits) -> None:
    if count == 0:
        raise InvalidRequest("texts", "at least one text is required")
    if count > limits.max_examples:
        raise InvalidRequest("texts", f"{count} texts exceed the limit of {limits.max_examples}")


def check_texts(texts: Sequence[str], limits: Limits) -> None:
    """The count first: ``texts`` may be a wire message's repeated field, read one string at a time."""
    check_text_count(len(texts), limits)
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
        check_choice_list(options, choices.field_of(index), limits)


def check_choice_count(count: int, field: str, limits: Limits) -> None:
    if count == 0:
        raise InvalidRequest(field, "at least one choice is required")
    if count > limits.max_choices:
        raise InvalidRequest(field, f"{count} choices exceed the limit of {limits.max_choices}")


def check_choice_list(options: Sequence[str], field: str, limits: Limits) -> None:
    """One text's choices (or the shared list): a count, then each string, none empty or too long."""
    check_choice_count(len(options), field, limits)
    for position, option in enumerate(options):
        if not option:
            raise InvalidRequest(f"{field}[{position}]", "empty choice string")
        if len(option) > limits.max_choice_chars:
            raise InvalidRequest(
                f"{field}[{position}]",
                f"{len(option)} characters exceed the limit of {limits.max_choice_chars}",
            )


def check_sequences(count: int, limits: Limits) -> None:
    if count > limits.max_sequences:
        raise InvalidRequest(
            "num_candidates",
            f"candidates x examples (x choices in full-choice mode) = {count} exceeds the limit of "
            f"{limits.max_sequences}; split the request",
        )
