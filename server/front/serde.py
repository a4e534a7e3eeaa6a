"""Every conversion between the wire (``cbpt.v1`` messages) and the engine's types, in one module.

Named by direction, as Flower's ``common/serde.py`` is: ``<thing>_from_proto`` reads a request,
``<thing>_to_proto`` builds an answer. Reading a request is the door's validation: every limit but
the token counts is checked here, once, through ``validation.py`` (counts on the message before
anything is copied out of it, strings as they are read), so a bad request is refused before it is
charged, queued or sent to a replica. Every error names the wire field. No other server module
touches a protobuf message's fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from cbpt.common.choices import Choices
from cbpt.common.info import AdapterInfo
from cbpt.common.limits import Limits
from cbpt.common.tasks.scoring import ScoringMode
from cbpt.common.version import __version__
from cbpt.common.wire import WireFormatError, pack_floats, unpack_floats
from cbpt.server.engine.types import EngineInfo, ScoreRequest, ScoreResult
from cbpt.server.errors import InvalidRequest, MalformedRequest
from cbpt.server.front import validation
from cbpt.v1 import tuning_pb2

_MODES = {
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


# -- server info -----------------------------------------------------------------------------------
def adapter_info_to_proto(adapter: AdapterInfo) -> tuning_pb2.AdapterInfo:
    return tuning_pb2.AdapterInfo(**dataclasses.asdict(adapter))  # the same fields, by name


def limits_to_proto(limits: Limits) -> tuning_pb2.Limits:
    return tuning_pb2.Limits(**limits.model_dump())


def server_info_to_proto(info: EngineInfo) -> tuning_pb2.ServerInfo:
    return tuning_pb2.ServerInfo(
        model_id=info.model_id,
        model_fingerprint=info.fingerprint,
        hidden_size=info.hidden_size,
        adapters=[adapter_info_to_proto(adapter) for adapter in info.adapters],
        limits=limits_to_proto(info.limits),
        server_version=__version__,
    )


# -- evaluate --------------------------------------------------------------------------------------
def score_request_from_proto(
    message: tuning_pb2.EvaluateRequest,
    limits: Limits,
    adapters: Mapping[str, AdapterInfo],
    scope: str = "",
) -> ScoreRequest:
    """The engine request for a wire request, every limit but the token counts checked; ``scope``
    (the API key id) keeps one key's cached text states from serving another key."""
    validation.check_text_count(len(message.texts), limits)  # O(1), before the size (which walks it all)
    validation.check_message_size(message.ByteSize(), limits)
    adapter = validation.served_adapter(message.adapter, adapters)
    validation.check_candidate_count(message.num_candidates, limits)
    validation.check_dimension(message.dimension, adapter)
    mode = scoring_mode_from_proto(message.mode)
    validation.check_texts(message.texts, limits)
    validation.check_cue(message.cue, adapter, limits)
    choices = choices_from_proto(message, limits)
    request = ScoreRequest(
        adapter=message.adapter,
        candidates=candidates_from_proto(message, limits),
        texts=list(message.texts),
        choices=choices,
        mode=mode,
        cue=message.cue,
        scope=scope,
    )
    validation.check_sequences(request.sequences, limits)
    return request


def scoring_mode_from_proto(mode: int) -> ScoringMode:
    if mode not in _MODES:
        raise InvalidRequest("mode", f"unknown scoring mode {mode}")
    return _MODES[mode]


def candidates_from_proto(message: tuning_pb2.EvaluateRequest, limits: Limits) -> np.ndarray:
    """The packed candidates as float32 [num_candidates, dimension], each finite and within bounds."""
    try:
        candidates = unpack_floats(
            message.candidates, (message.num_candidates, message.dimension), "candidates"
        )
    except WireFormatError as exc:
        raise InvalidRequest("candidates", str(exc).removeprefix("candidates: ")) from None
    validation.check_candidate_values(candidates, limits)
    return candidates


def choices_from_proto(message: tuning_pb2.EvaluateRequest, limits: Limits) -> Choices:
    """Exactly one of ``shared_choices`` (one list for every text) or ``example_choices`` (one per text),
    each list's count and strings checked before it is copied."""
    shared = message.HasField("shared_choices")
    per_example = len(message.example_choices)
    if shared and per_example:
        raise InvalidRequest("shared_choices", "set either shared_choices or example_choices, not both")
    if shared:
        validation.check_choice_list(message.shared_choices.choices, "shared_choices", limits)
        return Choices.shared_by_all(message.shared_choices.choices)
    if not per_example:
        raise InvalidRequest("shared_choices", "set one of shared_choices or example_choices")
    validation.check_choice_lists(per_example, len(message.texts))
    for index, options in enumerate(message.example_choices):
        validation.check_choice_list(options.choices, f"example_choices[{index}]", limits)
    return Choices.per_example([list(options.choices) for options in message.example_choices])


def score_result_to_proto(result: ScoreResult) -> tuning_pb2.EvaluateResponse:
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


# -- count tokens ----------------------------------------------------------------------------------
def texts_from_proto(message: tuning_pb2.CountTokensRequest, limits: Limits) -> list[str]:
    """The texts of a CountTokens request, checked as Evaluate's are before they are copied."""
    validation.check_text_count(len(message.texts), limits)
    validation.check_message_size(message.ByteSize(), limits)
    validation.check_texts(message.texts, limits)
    return list(message.texts)


def token_counts_to_proto(counts: list[int]) -> tuning_pb2.CountTokensResponse:
    return tuning_pb2.CountTokensResponse(counts=counts)


# -- what a call's log line may say: sizes and known names, never texts ------------------------------
def evaluate_log_fields(
    message: tuning_pb2.EvaluateRequest,
    response: tuning_pb2.EvaluateResponse | None,
    adapters: Mapping[str, AdapterInfo],
) -> dict[str, object]:
    fields: dict[str, object] = {
        "adapter": message.adapter if message.adapter in adapters else "<unknown>",
        "mode": tuning_pb2.ScoringMode.Name(message.mode) if message.mode in _MODES else "<unknown>",
        "num_candidates": message.num_candidates,
        "num_examples": len(message.texts),
        "num_choices": len(message.shared_choices.choices)
        + sum(len(options.choices) for options in message.example_choices),
        "request_bytes": message.ByteSize(),
    }
    if response is not None:
        fields["tokens"] = response.tokens_processed
    return fields


def count_tokens_log_fields(
    message: tuning_pb2.CountTokensRequest, response: tuning_pb2.CountTokensResponse | None
) -> dict[str, object]:
    return {"num_examples": len(message.texts), "request_bytes": message.ByteSize()}


def candidate_count(message: tuning_pb2.EvaluateRequest) -> int:
    """The candidates an Evaluate call asked for (the metrics count those answered)."""
    return message.num_candidates
