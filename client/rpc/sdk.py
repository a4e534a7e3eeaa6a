"""TuningClient: the one place the client talks gRPC.

It sends candidate vectors, unlabelled texts and ``Choices`` to the server and
returns log-probabilities; the messages themselves are built and read in
``serde``. Labels and losses have no parameter here, so they cannot reach the
wire. Around each call it adds the API key, a deadline, retries with jittered
exponential backoff (honouring the server's RetryInfo), and splitting to the
server's stated limits. Once a server has answered, an UNAVAILABLE is retried for
``retry_window`` seconds rather than a count of times, so a long run rides out a
server restart (tens of seconds); before that, a few quick retries say soon that
nothing is listening (or that TLS does not match). Calls may come from several threads at once
(``batches.py`` keeps several requests in flight): the channel is shared, the stats are locked.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeAlias, cast

import grpc
import numpy as np
from google.protobuf.message import Message

from cbpt.client.errors import ClientError, ConfigError, FieldViolation, RequestRejected
from cbpt.client.rpc import serde
from cbpt.client.rpc.splitting import Chunk, Workload, plan_chunks, text_parts
from cbpt.client.rpc.statuses import RETRYABLE, code_of, retry_delay, to_client_error
from cbpt.client.rpc.tls import TLSConfig
from cbpt.common.choices import Choices
from cbpt.common.info import ServerInfo
from cbpt.common.net import is_loopback_target
from cbpt.common.tasks.scoring import ScoringMode
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc

# What ``evaluate`` accepts as choices: a ``Choices``, one shared list, or one list per text.
ChoicesLike: TypeAlias = Choices | Sequence[str] | Sequence[Sequence[str]]
# The client's own ceiling on message size; requests are split to the server's smaller limit.
_CHANNEL_MESSAGE_BYTES = 256 * 1024 * 1024


@dataclass
class ClientStats:
    """Running totals of what this client sent and got back (benchmarks read them)."""

    calls: int = 0
    retries: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    server_seconds: float = 0.0
    tokens_processed: int = 0
    candidate_evaluations: int = 0  # candidates x evaluate() calls, before any splitting
    # What the server's budget was charged for the answered calls: candidates x examples (x choices
    # in full-choice mode), the unit of --evaluations-per-day / --evaluations-total.
    budget_used: int = 0

    def reset(self) -> None:
        for field in fields(self):
            setattr(self, field.name, field.default)

    def add(self, **amounts: float) -> None:
        """Add to several totals at once (a call may finish on any thread)."""
        with _STATS_LOCK:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)


_STATS_LOCK = threading.Lock()


def _shift_field(field: str, chunk: Chunk) -> str:
    """Rename a chunk-local field such as ``texts[2]`` to its index in the caller's arrays."""
    match = re.match(r"^(candidates|texts|example_choices)\[(\d+)\](.*)$", field)
    if not match:
        return field
    name, index, rest = match.groups()
    offset = chunk.candidates.start if name == "candidates" else chunk.examples.start
    return f"{name}[{int(index) + offset}]{rest}"


def _candidates(candidates: np.ndarray, dimension: int, adapter: str) -> np.ndarray:
    matrix = np.asarray(candidates, dtype=np.float32)
    if matrix.ndim == 1 and dimension == 0 and matrix.size == 0:
        matrix = matrix.reshape(1, 0)
    if matrix.ndim != 2 or matrix.shape[1] != dimension:
        message = f"candidates: shape {matrix.shape}, expected [n, {dimension}] for adapter {adapter!r}"
        raise RequestRejected(message, (FieldViolation("candidates", message),))
    if matrix.shape[0] == 0:
        raise RequestRejected("candidates: at least one candidate is required")
    return matrix


def _choices(choices: ChoicesLike, num_texts: int) -> Choices:
    """The stated ``Choices`` (one shared list, or exactly one list per text), refusing anything else."""
    try:
        stated = Choices.of(choices)
    except TypeError as error:
        raise RequestRejected(str(error)) from None
    if not stated.lists:
        raise RequestRejected("choices: at least one choice is required")
    if not stated.shared and len(stated.lists) != num_texts:
        raise RequestRejected(f"choices: {len(stated.lists)} choice lists for {num_texts} texts")
    return stated


def _mode(mode: ScoringMode | str) -> ScoringMode:
    try:
        return ScoringMode(mode)
    except ValueError:
        known = ", ".join(known.value for known in ScoringMode)
        raise RequestRejected(f"mode: unknown scoring mode {mode!r}; known: {known}") from None


@dataclass(frozen=True)
class _Batch:
    """One validated ``evaluate`` call, cut into wire requests chunk by chunk."""

    adapter: str
    candidates: np.ndarray  # float32 [n, dimension]
    texts: list[str]
    choices: Choices
    mode: ScoringMode
    cue: str = ""

    def workload(self) -> Workload:
        """Exact byte sizes (protobuf sizes of repeated fields add up) for the splitting plan."""
        dimension = self.candidates.shape[1]
        return Workload(
            num_candidates=self.candidates.shape[0],
            dimension=dimension,
            base_bytes=serde.request_base_bytes(self.adapter, dimension, self.choices, self.mode, self.cue),
            example_bytes=serde.example_bytes(self.texts, self.choices),
            choice_counts=self.choices.counts(len(self.texts)),
            full_choice=self.mode is ScoringMode.FULL_CHOICE,
        )

    def request(self, chunk: Chunk) -> tuning_pb2.EvaluateRequest:
        examples = slice(chunk.examples.start, chunk.examples.stop)
        return serde.evaluate_request_to_proto(
            self.adapter,
            self.candidates[chunk.candidates.start : chunk.candidates.stop],
            self.texts[examples],
            self.choices.take(examples),
            self.mode,
            self.cue,
        )

    def choice_counts(self, chunk: Chunk) -> list[int]:
        return [len(self.choices.of_example(i)) for i in chunk.examples]


class TuningClient:
    """A synchronous client of one cbp-tuning server.

    ``tls``: None picks TLS for any non-loopback target or when certificates are
    given; False forces plaintext; True or a ``TLSConfig`` forces TLS. An API key is
    never sent in plaintext to a non-loopback host.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        tls: bool | TLSConfig | None = None,
        root_certificates: Path | bytes | None = None,
        client_cert: Path | bytes | None = None,
        client_key: Path | bytes | None = None,
        timeout: float = 300.0,
        max_retries: int = 4,
        backoff_base: float = 0.25,
        backoff_max: float = 10.0,
        max_retry_wait: float = 60.0,
        retry_window: float = 60.0,
        interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = (),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if retry_window < 0:
            raise ConfigError(f"retry_window must be at least 0 seconds, got {retry_window}")
        self.target = target
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_window = retry_window
        self._clock = clock
        self._answered = False  # has this server answered a call yet (then UNAVAILABLE means a restart)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_wait = max_retry_wait
        self.stats = ClientStats()
        self._sleep = sleep
        self._jitter = random.Random()
        self._info: ServerInfo | None = None
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )
        tls_config = self._tls_config(tls, target, root_certificates, client_cert, client_key)
        self.uses_tls = tls_config is not None
        if tls_config is None and api_key and not is_loopback_target(target):
            raise ClientError(
                f"refusing to send an API key in plaintext to {target}; use TLS (a CA certificate)"
            )
        options: list[tuple[str, int | str]] = [
            ("grpc.max_send_message_length", _CHANNEL_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _CHANNEL_MESSAGE_BYTES),
            # Reconnect no slower than our own retries back off, so a retry finds a restarted server.
            ("grpc.initial_reconnect_backoff_ms", int(backoff_base * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(backoff_base * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(backoff_max * 1000)),
        ]
        if tls_config is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            if tls_config.server_name:
                options.append(("grpc.ssl_target_name_override", tls_config.server_name))
            self._channel = grpc.secure_channel(target, tls_config.credentials(), options=options)
        channel = grpc.intercept_channel(self._channel, *interceptors) if interceptors else self._channel
        self._stub = tuning_pb2_grpc.TuningStub(channel)

    @staticmethod
    def _tls_config(
        tls: bool | TLSConfig | None,
        target: str,
        root_certificates: Path | bytes | None,
        client_cert: Path | bytes | None,
        client_key: Path | bytes | None,
    ) -> TLSConfig | None:
        if isinstance(tls, TLSConfig):
            return tls
        certificates = (root_certificates, client_cert, client_key)
        given = any(value is not None for value in certificates)
        if tls is False:
            if given:
                raise ClientError("certificates were given but TLS is off (--insecure)")
            return None
        if tls is None and not given and is_loopback_target(target):
            return None
        return TLSConfig(*certificates)

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TuningClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------------------
    def _backoff(self, attempt: int, server_delay: float | None) -> float:
        if server_delay is not None:
            return server_delay * self._jitter.uniform(1.0, 1.1)
        ceiling = min(self.backoff_max, self.backoff_base * 2**attempt)
        return ceiling * self._jitter.uniform(0.5, 1.0)

    def _retry_wait(self, error: grpc.RpcError, attempt: int, first_failure: float) -> float | None:
        """Seconds to wait before retrying a failed call, or None to give up on it."""
        code, delay = code_of(error), retry_delay(error)
        if code not in RETRYABLE or (delay is not None and delay > self.max_retry_wait):
            return None
        wait = self._backoff(attempt, delay)
        if attempt < self.max_retries:
            return wait
        if code == grpc.StatusCode.UNAVAILABLE and self._answered:  # a restart: wait for it
            left = self.retry_window - (self._clock() - first_failure)
            return min(wait, left) if left > 0 else None
        return None

    def _call(self, method: str, request: Message) -> Message:
        rpc = getattr(self._stub, method)
        attempt, first_failure = 0, 0.0
        while True:
            try:
                response = rpc(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                first_failure = first_failure if attempt else self._clock()
                wait = self._retry_wait(error, attempt, first_failure)
                if wait is not None:
                    self._sleep(wait)
                    attempt += 1
                    self.stats.add(retries=1)
                    continue
                raise to_client_error(
                    error, target=self.target, method=method, timeout=self.timeout, tls=self.uses_tls
                ) from error
            self._answered = True
            self.stats.add(calls=1, bytes_sent=request.ByteSize(), bytes_received=response.ByteSize())
            return response

    def info(self, *, refresh: bool = False) -> ServerInfo:
        """The server's model, fingerprint, adapters and limits (cached after the first call)."""
        if self._info is None or refresh:
            response = self._call("GetServerInfo", serde.server_info_request_to_proto())
            self._info = serde.server_info_from_proto(cast(tuning_pb2.ServerInfo, response))
        return self._info

    def evaluate(
        self,
        adapter: str,
        candidates: np.ndarray,
        texts: Sequence[str],
        choices: ChoicesLike,
        mode: ScoringMode | str = ScoringMode.FIRST_TOKEN,
        cue: str = "",
    ) -> np.ndarray:
        """Log-probs float32 [num_candidates, num_examples, max_choices] of every choice.

        ``choices`` is a ``Choices``, or one list shared by all texts, or one list per text
        (``Choices.of`` reads the two plain forms); an example
        with fewer choices than the widest is padded with -inf. ``cue`` is the answer
        cue the server appends to every text (adapters that place their prompt before
        it let the server encode each text once). Requests larger than the server's
        limits are split and the results stitched back together.
        """
        info = self.info()
        try:
            dimension = info.adapter(adapter).dimension
        except KeyError as error:
            raise RequestRejected(
                str(error.args[0]), (FieldViolation("adapter", str(error.args[0])),)
            ) from None
        stated = _choices(choices, len(texts))
        batch = _Batch(
            adapter, _candidates(candidates, dimension, adapter), list(texts), stated, _mode(mode), cue
        )
        count = batch.candidates.shape[0]
        self.stats.add(candidate_evaluations=count)
        if not batch.texts:
            return np.zeros((count, 0, 0), dtype=np.float32)
        result = np.full((count, len(batch.texts), stated.width), -np.inf, dtype=np.float32)
        for chunk in plan_chunks(batch.workload(), info.limits):
            scores = self._evaluate_chunk(batch, chunk)
            rows, columns = chunk.candidates, chunk.examples
            result[rows.start : rows.stop, columns.start : columns.stop, : scores.shape[2]] = scores
        return result

    def predict(
        self,
        adapter: str,
        vector: np.ndarray,
        texts: Sequence[str],
        choices: ChoicesLike,
        mode: ScoringMode | str = ScoringMode.FIRST_TOKEN,
        cue: str = "",
    ) -> np.ndarray:
        """Log-probs [num_examples, max_choices] for one vector: ``evaluate`` with one candidate."""
        return self.evaluate(adapter, np.asarray(vector).reshape(1, -1), texts, choices, mode, cue)[0]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """How many tokens the server's tokenizer makes of each text (as Evaluate would tokenise it).

        The client has no tokenizer; this is what lets it fit long texts to ``max_text_tokens``
        before scoring. Split to the server's ``max_examples`` and ``max_message_bytes``. A
        server without the call raises NotSupported.
        """
        limits = self.info().limits
        texts = list(texts)
        counts: list[int] = []
        for part in text_parts(serde.text_bytes(texts), limits.max_examples, limits.max_message_bytes):
            response = self._call("CountTokens", serde.count_tokens_request_to_proto(texts[part]))
            reply = cast(tuning_pb2.CountTokensResponse, response)
            counts += serde.token_counts_from_proto(reply, part.stop - part.start)
        return counts

    def _evaluate_chunk(self, batch: _Batch, chunk: Chunk) -> np.ndarray:
        rows, columns = chunk.candidates, chunk.examples
        request = batch.request(chunk)
        try:
            response = self._call("Evaluate", request)
        except RequestRejected as error:
            if len(rows) == len(batch.candidates) and len(columns) == len(batch.texts):
                raise
            violations = tuple(
                FieldViolation(_shift_field(v.field, chunk), v.description) for v in error.violations
            )
            reason = "; ".join(str(v) for v in violations) or str(error)
            raise RequestRejected(f"server rejected Evaluate: {reason}", violations) from error
        evaluated = cast(tuning_pb2.EvaluateResponse, response)
        scores = serde.scores_from_proto(evaluated, len(rows), batch.choice_counts(chunk))
        counts = batch.choice_counts(chunk)
        self.stats.add(
            server_seconds=scores.server_seconds,
            tokens_processed=scores.tokens_processed,
            budget_used=len(rows) * (sum(counts) if batch.mode is ScoringMode.FULL_CHOICE else len(columns)),
        )
        return scores.log_probs
