"""ScoringEngine: scores a population of candidate vectors on unlabelled texts.

It knows nothing of gRPC, so the same ``score`` serves the gRPC service, tests,
generator training and benchmarks (and a Ray Serve deployment when one machine
is not enough). Everything is batched: every (candidate, example[, choice])
sequence is sorted by length and run in chunks that bound padding waste, and
the LM head is applied only where a choice token is needed.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch
from cbpt.server.adapters import Adapter
from cbpt.server.errors import InvalidRequest, UnknownAdapter
from cbpt.server.limits import Limits
from cbpt.server.model import ModelBundle
from cbpt.server.validation import check_candidates, check_sequences, check_texts, expand_choices


class ScoringMode(str, Enum):
    FIRST_TOKEN = "first_token"
    FULL_CHOICE = "full_choice"


@dataclass(frozen=True)
class ScoreRequest:
    adapter: str
    candidates: np.ndarray
    texts: Sequence[str]
    choices: Sequence[Sequence[str]]
    mode: ScoringMode = ScoringMode.FIRST_TOKEN


@dataclass(frozen=True)
class ScoreResult:
    log_probs: np.ndarray  # [candidates, examples, max_choices], -inf pads
    choice_counts: tuple[int, ...]
    tokens_processed: int
    seconds: float


@dataclass(frozen=True)
class AdapterDescription:
    name: str
    method: str
    dimension: int
    prompt_length: int
    domain: str
    description: str


@dataclass(frozen=True)
class EngineInfo:
    model_id: str
    fingerprint: str
    hidden_size: int
    adapters: tuple[AdapterDescription, ...]
    limits: Limits


@dataclass
class _Sequence:
    """One row of a forward batch: which candidate, which example, and the tokens after the prompt."""

    candidate: int
    example: int
    choice: int  # -1 in first-token mode: all choices are read from the last position
    tokens: list[int]
    scored: int = 0  # trailing tokens whose log-probs are summed (full-choice mode)
    length: int = field(init=False, default=0)


class _LRU:
    """A bounded in-memory cache; nothing a client sent ever reaches disk."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def get(self, key: str) -> tuple[int, ...] | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: tuple[int, ...]) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class ScoringEngine:
    def __init__(
        self,
        bundle: ModelBundle,
        adapters: Sequence[Adapter],
        limits: Limits | None = None,
        *,
        batch_sequences: int = 64,
        batch_tokens: int = 8192,
        token_cache_size: int = 4096,
    ) -> None:
        names = [adapter.name for adapter in adapters]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"adapter names must be unique; repeated: {', '.join(duplicates)}")
        self.bundle = bundle
        self.limits = limits or Limits()
        self.batch_sequences = batch_sequences
        self.batch_tokens = batch_tokens
        self.adapters = {adapter.name: adapter.to(bundle.device, bundle.dtype) for adapter in adapters}
        model = bundle.model
        self._embed = model.get_input_embeddings()
        self._head = model.get_output_embeddings()
        self._backbone = model.base_model
        self._bos = self._leading_special_tokens(bundle.tokenizer)
        self._pad_id = bundle.tokenizer.pad_token_id or 0
        self._lock = threading.Lock()
        self._token_cache = _LRU(token_cache_size)

    def info(self) -> EngineInfo:
        adapters = tuple(
            AdapterDescription(a.name, a.method, a.dimension, a.prompt_length, a.domain, a.description)
            for a in self.adapters.values()
        )
        return EngineInfo(
            self.bundle.model_id, self.bundle.fingerprint, self.bundle.hidden_size, adapters, self.limits
        )

    def score(self, request: ScoreRequest) -> ScoreResult:
        started = time.perf_counter()
        adapter = self.adapters.get(request.adapter)
        if adapter is None:
            raise UnknownAdapter(request.adapter, list(self.adapters))
        candidates = check_candidates(request.candidates, adapter, self.limits)
        check_texts(request.texts, self.limits)
        choices, choice_field = expand_choices(request.choices, len(request.texts), self.limits)
        mode = ScoringMode(request.mode)
        sequences_per_candidate = (
            sum(len(options) for options in choices)
            if mode is ScoringMode.FULL_CHOICE
            else len(request.texts)
        )
        check_sequences(len(candidates) * sequences_per_candidate, self.limits)
        with self._lock, torch.inference_mode():
            texts = [
                self._tokens(text, f"texts[{index}]", self.limits.max_text_tokens)
                for index, text in enumerate(request.texts)
            ]
            choice_tokens = self._choice_tokens(choices, choice_field, mode)
            log_probs, tokens = self._score(adapter, candidates, texts, choice_tokens, mode)
        counts = tuple(len(options) for options in choices)
        return ScoreResult(log_probs, counts, tokens, time.perf_counter() - started)

    # -- tokenisation ---------------------------------------------------------------------------

    @staticmethod
    def _leading_special_tokens(tokenizer) -> list[int]:
        """The tokens the tokenizer puts before any text (BOS for Llama-2 style models, none for SmolLM2)."""
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        without = tokenizer("a", add_special_tokens=False)["input_ids"]
        return (
            list(with_special[: len(with_special) - len(without)])
            if with_special[-len(without) :] == without
            else []
        )

    def _tokens(self, text: str, field_name: str, limit: int) -> tuple[int, ...]:
        tokens = self._token_cache.get(text)
        if tokens is None:
            tokens = tuple(self.bundle.tokenizer(text, add_special_tokens=False)["input_ids"])
            self._token_cache.put(text, tokens)
        if not tokens:
            raise InvalidRequest(field_name, "encodes to no tokens")
        if len(tokens) > limit:
            raise InvalidRequest(field_name, f"{len(tokens)} tokens exceed the limit of {limit}")
        return tokens

    def _choice_tokens(
        self, choices: list[list[str]], field_name: str, mode: ScoringMode
    ) -> list[list[tuple[int, ...]]]:
        encoded: list[list[tuple[int, ...]]] = []
        seen: dict[int, list[tuple[int, ...]]] = {}
        for index, options in enumerate(choices):
            key = id(options)
            if key in seen:  # a shared list is encoded once
                encoded.append(seen[key])
                continue
            prefix = field_name if field_name == "shared_choices" else f"{field_name}[{index}]"
            tokens = [
                self._tokens(option, f"{prefix}[{k}]", self.limits.max_choice_tokens)
                for k, option in enumerate(options)
            ]
            if mode is ScoringMode.FIRST_TOKEN:
                first = [option[0] for option in tokens]
                if len(set(first)) != len(first):
                    raise InvalidRequest(
                        prefix,
                        "two choices share their first token; use full-choice scoring or distinct choices",
                    )
            seen[key] = tokens
            encoded.append(tokens)
        return encoded

    # -- batched scoring ------------------------------------------------------------------------

    def _score(
        self,
        adapter: Adapter,
        candidates: np.ndarray,
        texts: list[tuple[int, ...]],
        choices: list[list[tuple[int, ...]]],
        mode: ScoringMode,
    ) -> tuple[np.ndarray, int]:
        device, dtype = self.bundle.device, self.bundle.dtype
        z = torch.from_numpy(candidates).to(device=device, dtype=dtype)
        pooled = torch.stack([self._embed(torch.tensor(ids, device=device)).mean(0) for ids in texts])
        sequences = self._plan(len(candidates), texts, choices, mode, adapter.prompt_length)
        max_choices = max(len(options) for options in choices)
        scores = np.full((len(candidates), len(texts), max_choices), -np.inf, dtype=np.float32)
        tokens = 0
        for chunk in self._chunks(sequences):
            hidden = self._forward(adapter, chunk, z, pooled)
            tokens += sum(seq.length for seq in chunk)
            if mode is ScoringMode.FIRST_TOKEN:
                self._read_first_tokens(hidden, chunk, choices, scores)
            else:
                self._read_full_choices(hidden, chunk, scores)
        log_probs = torch.from_numpy(scores).log_softmax(dim=-1).numpy()
        return log_probs.astype(np.float32, copy=False), tokens

    def _plan(
        self,
        num_candidates: int,
        texts: list[tuple[int, ...]],
        choices: list[list[tuple[int, ...]]],
        mode: ScoringMode,
        prompt_length: int,
    ) -> list[_Sequence]:
        sequences = []
        for candidate in range(num_candidates):
            for example, text in enumerate(texts):
                if mode is ScoringMode.FIRST_TOKEN:
                    sequences.append(_Sequence(candidate, example, -1, list(text)))
                    continue
                for k, option in enumerate(choices[example]):
                    sequences.append(_Sequence(candidate, example, k, list(text) + list(option), len(option)))
        for seq in sequences:
            seq.length = len(self._bos) + prompt_length + len(seq.tokens)
        return sequences

    def _chunks(self, sequences: list[_Sequence]) -> list[list[_Sequence]]:
        """Length-sorted chunks bounded in sequences and padded tokens (measured fastest on CPU)."""
        ordered = sorted(sequences, key=lambda seq: seq.length)
        chunks: list[list[_Sequence]] = []
        current: list[_Sequence] = []
        for seq in ordered:
            too_many = len(current) >= self.batch_sequences
            too_long = (len(current) + 1) * seq.length > self.batch_tokens
            if current and (too_many or too_long):
                chunks.append(current)
                current = []
            current.append(seq)
        if current:
            chunks.append(current)
        return chunks

    def _forward(
        self, adapter: Adapter, chunk: list[_Sequence], z: torch.Tensor, pooled: torch.Tensor
    ) -> torch.Tensor:
        """Left-padded forward pass: [pad][bos][soft prompt][text (+ choice)]; returns the last hidden states."""
        device = self.bundle.device
        width = max(seq.length for seq in chunk)
        prompt_length = adapter.prompt_length
        ids = torch.full((len(chunk), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        soft = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, seq in enumerate(chunk):
            start = width - seq.length
            mask[row, start:] = 1
            body = start + len(self._bos)
            ids[row, start:body] = torch.tensor(self._bos, dtype=torch.long)
            soft[row, body : body + prompt_length] = True
            ids[row, body + prompt_length :] = torch.tensor(seq.tokens, dtype=torch.long)
        ids, mask, soft = ids.to(device), mask.to(device), soft.to(device)
        embeds = self._embed(ids)
        if prompt_length:
            rows = torch.tensor([seq.candidate for seq in chunk], device=device)
            examples = torch.tensor([seq.example for seq in chunk], device=device)
            prompts = adapter.soft_prompts(z[rows], pooled[examples])
            embeds[soft] = prompts.reshape(-1, prompts.shape[-1]).to(embeds.dtype)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        output = self._backbone(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
        )
        return output.last_hidden_state

    def _head_logits(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Logits of only ``token_ids`` rows of the LM head, in fp32: hidden [..., d], ids [..., c]."""
        rows = self._head.weight[token_ids].float()
        logits = (rows @ hidden.float().unsqueeze(-1)).squeeze(-1)
        if getattr(self._head, "bias", None) is not None:
            logits = logits + self._head.bias[token_ids].float()
        return logits

    def _read_first_tokens(
        self,
        hidden: torch.Tensor,
        chunk: list[_Sequence],
        choices: list[list[tuple[int, ...]]],
        scores: np.ndarray,
    ) -> None:
        max_choices = scores.shape[-1]
        ids = torch.zeros((len(chunk), max_choices), dtype=torch.long)
        valid = torch.zeros((len(chunk), max_choices), dtype=torch.bool)
        for row, seq in enumerate(chunk):
            firsts = [option[0] for option in choices[seq.example]]
            ids[row, : len(firsts)] = torch.tensor(firsts)
            valid[row, : len(firsts)] = True
        logits = self._head_logits(hidden[:, -1, :], ids.to(hidden.device)).cpu()
        logits = logits.masked_fill(~valid, -np.inf).numpy()
        for row, seq in enumerate(chunk):
            scores[seq.candidate, seq.example] = logits[row]

    def _read_full_choices(self, hidden: torch.Tensor, chunk: list[_Sequence], scores: np.ndarray) -> None:
        """Sum of log p(choice token | everything before it), from a full-vocabulary softmax at those positions only."""
        width = hidden.shape[1]
        weight = self._head.weight
        for row, seq in enumerate(chunk):
            targets = torch.tensor(seq.tokens[-seq.scored :], device=hidden.device)
            positions = torch.arange(width - seq.scored - 1, width - 1, device=hidden.device)
            logits = hidden[row, positions].float() @ weight.float().T
            if getattr(self._head, "bias", None) is not None:
                logits = logits + self._head.bias.float()
            total = logits.log_softmax(-1).gather(-1, targets[:, None]).sum()
            scores[seq.candidate, seq.example, seq.choice] = float(total)
