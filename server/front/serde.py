"""Every conversion between the wire (``cbpt.v1`` messages) and the engine's types, in one module.

This module checks the wire shape (message size, candidate bytes, which choice field is set) and,
before anything is copied out of a message, every count and string bound (engine/validation.py
holds the checks; the servicer runs the rest before queueing). Every error names the wire field. As in Flower's serde, no
other server module touches a protobuf message's fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError, Message

from cbpt.common.choices import Choices
from cbpt.common.limits import Limits
from cbpt.common.version import __version__
from cbpt.common.wire import WireFormatError, pack_floats, unpack_floats
from cbpt.server.engine.types import EngineInfo, ScoreRequest, ScoreResult, ScoringMode
from cbpt.server.engine.validation import check_choice_list, check_cue, check_text_count, check_texts
from cbpt.server.errors import InvalidRequest, MalformedRequest
from cbpt.v1 import tuning_pb2

MODES = {
    tuning_pb2.SCORING_MODE_UNSPECIFIED: ScoringMode.FIRST_TOKEN,
    tuning_pb2.SCORING_MODE_FIRST_TOKEN: ScoringMode.FIRST_TOKEN,
    tuning_pb2.SCORING_MODE_FULL_CHOICE: ScoringMode.FULL_CHOICE,
}


def safe_parser(parse: Callable[[bytes], Any], message_name: str) -> Callable[[bytes], Any]:
    """A request deserializer that never raises: bytes that do not parse become a ``MalformedRequest``
    in place of the message, for the handler to answer INVALID_ARGUMENT (grpc would answer UNKNOWN
    and log a traceback)."""

    def parse_or_error(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return MalformedRequest(message_name, len(data))

    return parse_or_error


def server_info_message(info: EngineInfo) -> tuning_pb2.ServerInfo:
    limits = info.limits
    return tuning_pb2.ServerInfo(
        model_id=info.model_id,
        model_fingerprint=info.fingerprint,
        hidden_size=info.hidden_size,
        adapters=[
            tuning_pb2.AdapterInfo(
                name=a.name,
                method=a.method,
                dimension=a.dimension,
                prompt_length=a.prompt_length,
                domain=a.domain,
                description=a.description,
                placement=a.placement,
            )
            for a in info.adapters
        ],
        limits=tuning_pb2.Limits(**limits.model_dump()),
        server_version=__version__,
    )


def to_score_request(request: tuning_pb2.EvaluateRequest, limits: Limits, scope: str = "") -> ScoreRequest:
    """The engine request for a wire request; ``scope`` (the API key id) keeps one key's cached
    text states from serving another key. Every count is checked on the message before anything
    is copied out of it, and every string is checked as it is copied."""
    check_text_count(len(request.texts), limits)  # O(1), before even the size (which walks the message)
    check_message_size(request, limits)
    if request.num_candidates == 0:
        raise InvalidRequest("num_candidates", "must be at least 1")
    if request.num_candidates > limits.max_candidates:
        raise InvalidRequest(
            "num_candidates", f"{request.num_candidates} exceeds max_candidates {limits.max_candidates}"
        )
    mode = MODES.get(request.mode)
    if mode is None:
        raise InvalidRequest("mode", f"unknown scoring mode {request.mode}")
    check_texts(request.texts, limits)
    check_cue(request.cue, limits)
    choices = choices_of(request, limits)
    try:
        candidates = unpack_floats(
            request.candidates, (request.num_candidates, request.dimension), "candidates"
        )
    except WireFormatError as exc:
        raise InvalidRequest("candidates", str(exc).removeprefix("candidates: ")) from None
    return ScoreRequest(
        adapter=request.adapter,
        candidates=candidates,
        texts=list(request.texts),
        choices=choices,
        mode=mode,
        cue=request.cue,
        scope=scope,
    )


def to_count_texts(request: tuning_pb2.CountTokensRequest, limits: Limits) -> list[str]:
    """The texts of a CountTokens request, checked as Evaluate's are before they are copied."""
    check_text_count(len(request.texts), limits)
    check_message_size(request, limits)
    check_texts(request.texts, limits)
    return list(request.texts)


def check_message_size(request: Message, limits: Limits) -> None:
    size = request.ByteSize()
    if size > limits.max_message_bytes:
        raise InvalidRequest(
            "request", f"message size {size} bytes exceeds max_message_bytes {limits.max_message_bytes}"
        )


def to_count_response(counts: list[int]) -> tuning_pb2.CountTokensResponse:
    return tuning_pb2.CountTokensResponse(counts=counts)


def choices_of(request: tuning_pb2.EvaluateRequest, limits: Limits) -> Choices:
    """Exactly one of ``shared_choices`` (one list for every text) or ``example_choices`` (one per text),
    each list's count and strings checked before it is copied."""
    shared = request.HasField("shared_choices")
    per_example = len(request.example_choices)
    if shared and per_example:
        raise InvalidRequest("shared_choices", "set either shared_choices or example_choices, not both")
    if shared:
        check_choice_list(request.shared_choices.choices, "shared_choices", limits)
        return Choices.shared_by_all(request.shared_choices.choices)
    if not per_example:
        raise InvalidRequest("shared_choices", "set one of shared_choices or example_choices")
    if per_example != len(request.texts):
        raise InvalidRequest(
            "example_choices", f"{per_example} choice lists for {len(request.texts)} texts; send one per text"
        )
    for index, options in enumerate(request.example_choices):
        check_choice_list(options.choices, f"example_choices[{index}]", limits)
    return Choices.per_example([list(c.choices) for c in request.example_choices])


def to_response(result: ScoreResult) -> tuning_pb2.EvaluateResponse:
    """Pack log-probs ragged: candidate-major, then example, then only that example's real choices."""
    log_probs = np.asarray(result.log_probs, dtype=np.float32)
    counts = np.asarray(result.choice_counts, dtype=np.int64)
    real = np.arange(log_probs.shape[2])[None, :] < counts[:, None]  # [examples, max_choices]
    return tuning_pb2.EvaluateResponse(
        num_candidates=log_probs.shape[0],
        num_examples=log_probs.shape[1],
        log_probs=pack_floats(log_probs[:, real]),
        tokens_processed=result.tokens_processed,
        server_seconds=result.seconds,
    )


def mode_name(mode: int) -> str:
    """A wire mode's name for logs; ``<unknown>`` for values outside the enum."""
    return tuning_pb2.ScoringMode.Name(mode) if mode in MODES else "<unknown>"


def choice_count(request: tuning_pb2.EvaluateRequest) -> int:
    return len(request.shared_choices.choices) + sum(len(c.choices) for c in request.example_choices)
