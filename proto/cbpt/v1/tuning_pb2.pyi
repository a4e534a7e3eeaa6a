from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoringMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORING_MODE_UNSPECIFIED: _ClassVar[ScoringMode]
    SCORING_MODE_FIRST_TOKEN: _ClassVar[ScoringMode]
    SCORING_MODE_FULL_CHOICE: _ClassVar[ScoringMode]
SCORING_MODE_UNSPECIFIED: ScoringMode
SCORING_MODE_FIRST_TOKEN: ScoringMode
SCORING_MODE_FULL_CHOICE: ScoringMode

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AdapterInfo(_message.Message):
    __slots__ = ("name", "method", "dimension", "prompt_length", "domain", "description", "placement")
    NAME_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    method: str
    dimension: int
    prompt_length: int
    domain: str
    description: str
    placement: str
    def __init__(self, name: _Optional[str] = ..., method: _Optional[str] = ..., dimension: _Optional[int] = ..., prompt_length: _Optional[int] = ..., domain: _Optional[str] = ..., description: _Optional[str] = ..., placement: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_candidates", "max_examples", "max_choices", "max_text_tokens", "max_text_chars", "max_choice_tokens", "max_sequences", "max_message_bytes", "max_candidate_abs", "max_choice_chars")
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_CHOICES_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHOICE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATE_ABS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHOICE_CHARS_FIELD_NUMBER: _ClassVar[int]
    max_candidates: int
    max_examples: int
    max_choices: int
    max_text_tokens: int
    max_text_chars: int
    max_choice_tokens: int
    max_sequences: int
    max_message_bytes: int
    max_candidate_abs: float
    max_choice_chars: int
    def __init__(self, max_candidates: _Optional[int] = ..., max_examples: _Optional[int] = ..., max_choices: _Optional[int] = ..., max_text_tokens: _Optional[int] = ..., max_text_chars: _Optional[int] = ..., max_choice_tokens: _Optional[int] = ..., max_sequences: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_candidate_abs: _Optional[float] = ..., max_choice_chars: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("model_id", "model_fingerprint", "hidden_size", "adapters", "limits", "server_version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_fingerprint: str
    hidden_size: int
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterInfo]
    limits: Limits
    server_version: str
    def __init__(self, model_id: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., hidden_size: _Optional[int] = ..., adapters: _Optional[_Iterable[_Union[AdapterInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., server_version: _Optional[str] = ...) -> None: ...

class ChoiceList(_message.Message):
    __slots__ = ("choices",)
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    choices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, choices: _Optional[_Iterable[str]] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("adapter", "dimension", "num_candidates", "candidates", "texts", "shared_choices", "example_choices", "mode", "cue")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    SHARED_CHOICES_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_CHOICES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CUE_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    dimension: int
    num_candidates: int
    candidates: bytes
    texts: _containers.RepeatedScalarFieldContainer[str]
    shared_choices: ChoiceList
    example_choices: _containers.RepeatedCompositeFieldContainer[ChoiceList]
    mode: ScoringMode
    cue: str
    def __init__(self, adapter: _Optional[str] = ..., dimension: _Optional[int] = ..., num_candidates: _Optional[int] = ..., candidates: _Optional[bytes] = ..., texts: _Optional[_Iterable[str]] = ..., shared_choices: _Optional[_Union[ChoiceList, _Mapping]] = ..., example_choices: _Optional[_Iterable[_Union[ChoiceList, _Mapping]]] = ..., mode: _Optional[_Union[ScoringMode, str]] = ..., cue: _Optional[str] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("num_candidates", "num_examples", "log_probs", "tokens_processed", "server_seconds")
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOG_PROBS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    SERVER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    num_candidates: int
    num_examples: int
    log_probs: bytes
    tokens_processed: int
    server_seconds: float
    def __init__(self, num_candidates: _Optional[int] = ..., num_examples: _Optional[int] = ..., log_probs: _Optional[bytes] = ..., tokens_processed: _Optional[int] = ..., server_seconds: _Optional[float] = ...) -> None: ...

class CountTokensRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class CountTokensResponse(_message.Message):
    __slots__ = ("counts",)
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, counts: _Optional[_Iterable[int]] = ...) -> None: ...
