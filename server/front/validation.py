"""Every request limit but the token counts, checked once, at the door, as serde reads the message.

Each check raises ``InvalidRequest`` naming the offending wire field, with one wording per kind of
limit (``InvalidRequest.over_limit``: ``texts: 7 texts exceed the limit of 6``), so a client can fix
exactly that field. Counts are checked on the message before anything is copied out of it, strings
as they are read. Only the token limits need the tokenizer: the engine checks them
(``engine/prepare.py``), in the same wording, before it caches anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cbpt.common.info import AdapterInfo
from cbpt.common.limits import Limits
from cbpt.server.adapters.placement import Placement
from cbpt.server.errors import InvalidRequest, UnknownAdapter


def served_adapter(name: str, adapters: Mapping[str, AdapterInfo]) -> AdapterInfo:
    adapter = adapters.get(name)
    if adapter is None:
        raise UnknownAdapter(name, list(adapters))
    return adapter


def check_message_size(size: int, limits: Limits) -> None:
    if size > limits.max_message_bytes:
        raise InvalidRequest(
            "request", f"message size {size} bytes exceeds max_message_bytes {limits.max_message_bytes}"
        )


def check_candidate_count(count: int, limits: Limits) -> None:
    if count == 0:
        raise InvalidRequest("num_candidates", "at least one candidate is required")
    if count > limits.max_candidates:
        raise InvalidRequest.over_limit("num_candidates", count, "candidates", limits.max_candidates)


def check_dimension(dimension: int, adapter: AdapterInfo) -> None:
    if dimension != adapter.dimension:
        raise InvalidRequest(
            "dimension", f"length {dimension}, expected {adapter.dimension} for adapter {adapter.name!r}"
        )


def check_candidate_values(candidates: np.ndarray, limits: Limits) -> None:
    """Each candidate finite and within ``max_candidate_abs`` (beyond it a soft prompt only saturates)."""
    finite = np.isfinite(candidates).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InvalidRequest(f"candidates[{row}]", "contains NaN or inf")
    if candidates.size:
        largest = np.abs(candidates).max(axis=1)
        beyond = np.flatnonzero(largest > limits.max_candidate_abs)
        if beyond.size:
            row = int(beyond[0])
            raise InvalidRequest(
                f"candidates[{row}]",
                f"value {largest[row]:.6g} exceeds the bound of {limits.max_candidate_abs:g} "
                "in absolute value (max_candidate_abs): the soft prompt would only saturate the model",
            )


def check_text_count(count: int, limits: Limits) -> None:
    if count == 0:
        raise InvalidRequest("texts", "at least one text is required")
    if count > limits.max_examples:
        raise InvalidRequest.over_limit("texts", count, "texts", limits.max_examples)


def check_texts(texts: Sequence[str], limits: Limits) -> None:
    """The count first: ``texts`` may be a wire message's repeated field, read one string at a time."""
    check_text_count(len(texts), limits)
    for index, text in enumerate(texts):
        if not text or not text.strip():
            raise InvalidRequest(f"texts[{index}]", "empty text")
        if len(text) > limits.max_text_chars:
            raise InvalidRequest.over_limit(f"texts[{index}]", len(text), "characters", limits.max_text_chars)


def check_cue(cue: str, adapter: AdapterInfo, limits: Limits) -> None:
    if len(cue) > limits.max_text_chars:
        raise InvalidRequest.over_limit("cue", len(cue), "characters", limits.max_text_chars)
    if adapter.placement == Placement.ON_CUE and not cue:
        raise InvalidRequest("cue", f"adapter {adapter.name!r} adds its prompt onto the answer cue; give one")


def check_choice_lists(count: int, num_texts: int) -> None:
    """Per-example choices: exactly one list per text."""
    if count != num_texts:
        raise InvalidRequest(
            "example_choices", f"{count} choice lists for {num_texts} texts; send one per text"
        )


def check_choice_list(options: Sequence[str], field: str, limits: Limits) -> None:
    """One text's choices (or the shared list): a count, then each string, none empty or too long."""
    if len(options) == 0:
        raise InvalidRequest(field, "at least one choice is required")
    if len(options) > limits.max_choices:
        raise InvalidRequest.over_limit(field, len(options), "choices", limits.max_choices)
    for position, option in enumerate(options):
        if not option:
            raise InvalidRequest(f"{field}[{position}]", "empty choice string")
        if len(option) > limits.max_choice_chars:
            raise InvalidRequest.over_limit(
                f"{field}[{position}]", len(option), "characters", limits.max_choice_chars
            )


def check_sequences(count: int, limits: Limits) -> None:
    if count > limits.max_sequences:
        raise InvalidRequest(
            "num_candidates",
            f"candidates x examples (x choices in full-choice mode) = {count} exceeds the limit of "
            f"{limits.max_sequences}; split the request",
        )
