"""Every conversion between the wire (``proto/cbpt/v1/tuning.proto``) and the client's own types.

As in Flower's ``common/serde.py``: the SDK moves messages, this module alone knows their fields,
and each conversion is named by its direction (``<thing>_to_proto``, ``<thing>_from_proto``). Choices
are sent as they are stated (``Choices.shared``), never guessed from a length: a one-text request with
its own list keeps ``example_choices``. Byte sizes for the splitting plan come from protobuf here too,
so they match the requests exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cbpt.client.errors import ClientError
from cbpt.common.choices import Choices
from cbpt.common.info import AdapterInfo, ServerInfo
from cbpt.common.limits import Limits
from cbpt.common.tasks.scoring import ScoringMode
from cbpt.common.wire import WireFormatError, pack_floats, unpack_floats
from cbpt.v1 import tuning_pb2

_MODES = {
    ScoringMode.FIRST_TOKEN: tuning_pb2.SCORING_MODE_FIRST_TOKEN,
    ScoringMode.FULL_CHOICE: tuning_pb2.SCORING_MODE_FULL_CHOICE,
}
# A count as wide as the field can hold, so a size estimate never undercounts its varint.
_WIDEST_COUNT = 2**32 - 1


# -- server info -----------------------------------------------------------------------------------
def server_info_request_to_proto() -> tuning_pb2.GetServerInfoRequest:
    return tuning_pb2.GetServerInfoRequest()


def adapter_info_from_proto(message: tuning_pb2.AdapterInfo) -> AdapterInfo:
    return AdapterInfo(
        name=message.name,
        method=message.method,
        dimension=int(message.dimension),
        prompt_length=int(message.prompt_length),
        domain=message.domain,
        description=message.description,
        placement=message.placement,
    )


def server_info_from_proto(message: tuning_pb2.ServerInfo) -> ServerInfo:
    limits = Limits.stated(**{name: getattr(message.limits, name) for name in Limits.model_fields})
    return ServerInfo(
        model_id=message.model_id,
        model_fingerprint=message.model_fingerprint,
        hidden_size=int(message.hidden_size),
        adapters=tuple(adapter_info_from_proto(adapter) for adapter in message.adapters),
        limits=limits,
        server_version=message.server_version,
    )


# -- evaluate requests -----------------------------------------------------------------------------
def scoring_mode_to_proto(mode: ScoringMode) -> tuning_pb2.ScoringMode:
    return _MODES[mode]


def _request(
    adapter: str, dimension: int, mode: ScoringMode, cue: str, num_candidates: int
) -> tuning_pb2.EvaluateRequest:
    return tuning_pb2.EvaluateRequest(
        adapter=adapter,
        dimension=dimension,
        mode=scoring_mode_to_proto(mode),
        cue=cue,
        num_candidates=num_candidates,
    )


def _add_choices(request: tuning_pb2.EvaluateRequest, choices: Choices) -> None:
    if choices.shared:
        request.shared_choices.choices.extend(choices.lists[0])
    else:
        for options in choices.lists:
            request.example_choices.add().choices.extend(options)


def evaluate_request_to_proto(
    adapter: str,
    candidates: np.ndarray,
    texts: Sequence[str],
    choices: Choices,
    mode: ScoringMode = ScoringMode.FIRST_TOKEN,
    cue: str = "",
) -> tuning_pb2.EvaluateRequest:
    """One wire request: ``candidates`` float32 [n, dimension], and one choice list per text unless shared."""
    request = _request(adapter, candidates.shape[1], mode, cue, candidates.shape[0])
    request.candidates = pack_floats(candidates)
    request.texts.extend(texts)
    _add_choices(request, choices)
    return request


def request_base_bytes(adapter: str, dimension: int, choices: Choices, mode: ScoringMode, cue: str) -> int:
    """Bytes of a request with no texts and no candidates: what every request of one call repeats."""
    base = _request(adapter, dimension, mode, cue, _WIDEST_COUNT)
    if choices.shared:
        _add_choices(base, choices)
    return base.ByteSize()


def example_bytes(texts: Sequence[str], choices: Choices) -> list[int]:
    """Bytes each text adds to a request, with its own choice list when the choices are per example."""
    sizes = []
    for index, text in enumerate(texts):
        single = tuning_pb2.EvaluateRequest(texts=[text])
        if not choices.shared:
            single.example_choices.add().choices.extend(choices.of_example(index))
        sizes.append(single.ByteSize())
    return sizes


# -- evaluate responses ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Scores:
    """One response, unpacked: log-probs [candidates, examples, widest], padded with -inf."""

    log_probs: np.ndarray
    tokens_processed: int
    server_seconds: float


def scores_from_proto(
    response: tuning_pb2.EvaluateResponse, num_candidates: int, choice_counts: Sequence[int]
) -> Scores:
    """Unpack the ragged log-probs (each example carries only its own choices) into a padded array."""
    counts = np.asarray(choice_counts, dtype=np.int64)
    if response.num_candidates != num_candidates or response.num_examples != len(counts):
        raise ClientError(
            f"log_probs: server answered {response.num_candidates} x {response.num_examples}, "
            f"expected {num_candidates} x {len(counts)}"
        )
    try:
        flat = unpack_floats(response.log_probs, (num_candidates, int(counts.sum())), "log_probs")
    except WireFormatError as error:
        raise ClientError(str(error)) from error
    scores = np.full((num_candidates, len(counts), int(counts.max())), -np.inf, dtype=np.float32)
    scores[:, np.arange(scores.shape[2])[None, :] < counts[:, None]] = flat
    return Scores(scores, int(response.tokens_processed), float(response.server_seconds))


# -- token counts ----------------------------------------------------------------------------------
def count_tokens_request_to_proto(texts: Sequence[str]) -> tuning_pb2.CountTokensRequest:
    return tuning_pb2.CountTokensRequest(texts=list(texts))


def text_bytes(texts: Sequence[str]) -> list[int]:
    """Bytes each text adds to a CountTokens request (for splitting to max_message_bytes)."""
    return [tuning_pb2.CountTokensRequest(texts=[text]).ByteSize() for text in texts]


def token_counts_from_proto(response: tuning_pb2.CountTokensResponse, num_texts: int) -> list[int]:
    if len(response.counts) != num_texts:
        raise ClientError(f"counts: server answered {len(response.counts)} counts for {num_texts} texts")
    return [int(count) for count in response.counts]
