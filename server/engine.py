"""ScoringEngine: scores a population of candidate vectors on unlabelled texts.

It knows nothing of gRPC, so the same ``score`` serves the gRPC service, tests,
generator training and benchmarks (and a Ray Serve deployment when one machine
is not enough). Every (candidate, example[, choice]) sequence runs batched in
length-sorted chunks, and the LM head is applied only where a choice token is
read. Whatever does not depend on the row is computed once: adapters whose
prompt sits after the text reuse each text's keys and values across candidates
(and across requests of the same API key); an input-independent prefix prompt
(BBT) is encoded once per candidate. ``score_many`` lays several requests end
to end in the same chunks, which is how concurrent calls share forward passes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from transformers.cache_utils import DynamicCache

from cbpt.server.adapters import Adapter, Placement
from cbpt.server.batching import Row, length_sorted_chunks, plan_rows
from cbpt.server.errors import InvalidRequest, UnknownAdapter
from cbpt.server.kv_cache import KVState, TextStateCache, encode_left_padded
from cbpt.server.limits import Limits
from cbpt.server.model import ModelBundle
from cbpt.server.readout import read_first_tokens, read_full_choices
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
    # Shared answer cue after each text (e.g. "\nSentiment:"); before-cue adapters put the prompt before it.
    cue: str = ""
    # Whose cache entries may be reused: the API key id. Keys never share cached text states.
    scope: str = ""


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
    placement: str = "prefix"


@dataclass(frozen=True)
class EngineInfo:
    model_id: str
    fingerprint: str
    hidden_size: int
    adapters: tuple[AdapterDescription, ...]
    limits: Limits


class _TokenCache:
    """Bounded in-memory tokenisation cache; nothing a client sent ever reaches disk."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    def get(self, text: str) -> tuple[int, ...] | None:
        tokens = self._items.get(text)
        if tokens is not None:
            self._items.move_to_end(text)
        return tokens

    def put(self, text: str, tokens: tuple[int, ...]) -> None:
        self._items[text] = tokens
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


@dataclass(frozen=True)
class _Placed:
    """Where a chunk's soft prompts go, relative to the position right after the text."""

    inserted: int  # vectors inserted as tokens there (prefix and before-cue placements)
    cue_length: int
    on_cue: int  # trailing cue tokens the prompt is added onto (on-cue placement)

    def span(self, start: int) -> slice:
        if self.inserted:
            return slice(start, start + self.inserted)
        return slice(start + self.cue_length - self.on_cue, start + self.cue_length)

    def apply(self, embeds: torch.Tensor, where: torch.Tensor, prompts: torch.Tensor) -> None:
        """Write inserted prompts into ``where``, or add the prompt's last rows onto the cue there."""
        width = embeds.shape[-1]
        if self.inserted:
            embeds[where] = prompts.reshape(-1, width).to(embeds.dtype)
        elif self.on_cue:
            embeds[where] += prompts[:, prompts.shape[1] - self.on_cue :].reshape(-1, width).to(embeds.dtype)


@dataclass
class _Encoded:
    texts: list[tuple[int, ...]]
    cue: tuple[int, ...]
    choices: list[list[tuple[int, ...]]]


@dataclass
class _Prepared:
    """A validated, tokenised request, ready to share forward passes with others like it."""

    adapter: Adapter
    candidates: np.ndarray
    encoded: _Encoded
    mode: ScoringMode
    scope: str
    choice_counts: tuple[int, ...]


class _Path(Enum):
    """How a group's rows run: in full, or after keys and values cached per text or per candidate."""

    FLAT = "flat"
    TEXT_STATES = "text_states"  # prompt after the text: each text encoded once per scope
    PREFIX_STATES = "prefix_states"  # input-independent prefix: each candidate's prompt encoded once


def leading_special_tokens(tokenizer) -> tuple[int, ...]:
    """What the tokenizer puts before any text: BOS for Llama-2 style models, nothing for SmolLM2."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if with_special[len(with_special) - len(plain) :] != plain:
        return ()
    return tuple(with_special[: len(with_special) - len(plain)])


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
        text_states: TextStateCache | None = None,
        reuse_text_states: bool = True,
        reuse_prefix_states: bool = True,
        sort_by_length: bool = True,
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
        self.text_states = text_states if text_states is not None else TextStateCache()
        self.reuse_text_states = reuse_text_states
        self.reuse_prefix_states = reuse_prefix_states
        self.sort_by_length = sort_by_length
        model = bundle.model
        self._embed = model.get_input_embeddings()
        self._head = model.get_output_embeddings()
        self._backbone = model.base_model
        self._bos = leading_special_tokens(bundle.tokenizer)
        self._pad_id = bundle.tokenizer.pad_token_id or 0
        self._lock = threading.Lock()
        self._token_cache = _TokenCache(token_cache_size)

    def info(self) -> EngineInfo:
        adapters = tuple(
            AdapterDescription(
                a.name, a.method, a.dimension, a.prompt_length, a.domain, a.description, a.placement.value
            )
            for a in self.adapters.values()
        )
        bundle = self.bundle
        return EngineInfo(bundle.model_id, bundle.fingerprint, bundle.hidden_size, adapters, self.limits)

    def score(self, request: ScoreRequest) -> ScoreResult:
        outcome = self.score_many([request])[0]
        if isinstance(outcome, InvalidRequest):
            raise outcome
        return outcome

    def score_many(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult | InvalidRequest]:
        """Score several requests, sharing forward passes among those with one adapter, mode and cue.

        Each request is validated on its own: a bad one gets its error back in its slot and the
        others are still scored. Merged scores equal those of scoring each request alone.
        """
        started = time.perf_counter()
        outcomes: list[ScoreResult | InvalidRequest | None] = [None] * len(requests)
        with self._lock, torch.inference_mode():
            groups: dict[tuple[str, ScoringMode, tuple[int, ...]], list[tuple[int, _Prepared]]] = {}
            for index, request in enumerate(requests):
                try:
                    prepared = self._prepare(request)
                except InvalidRequest as error:
                    outcomes[index] = error
                    continue
                key = (prepared.adapter.name, prepared.mode, prepared.encoded.cue)
                groups.setdefault(key, []).append((index, prepared))
            for members in groups.values():
                scored = self._score_group([prepared for _, prepared in members])
                for (index, prepared), (log_probs, tokens) in zip(members, scored, strict=True):
                    seconds = time.perf_counter() - started
                    outcomes[index] = ScoreResult(log_probs, prepared.choice_counts, tokens, seconds)
        return [outcome for outcome in outcomes if outcome is not None]

    def _prepare(self, request: ScoreRequest) -> _Prepared:
        """Validate and tokenise one request; raises InvalidRequest naming the field."""
        adapter = self.adapters.get(request.adapter)
        if adapter is None:
            raise UnknownAdapter(request.adapter, list(self.adapters))
        candidates = check_candidates(request.candidates, adapter, self.limits)
        check_texts(request.texts, self.limits)
        if len(request.cue) > self.limits.max_text_chars:
            raise InvalidRequest(
                "cue", f"{len(request.cue)} characters exceed the limit of {self.limits.max_text_chars}"
            )
        choices, choice_field = expand_choices(request.choices, len(request.texts), self.limits)
        mode = ScoringMode(request.mode)
        per_candidate = sum(map(len, choices)) if mode is ScoringMode.FULL_CHOICE else len(choices)
        check_sequences(len(candidates) * per_candidate, self.limits)
        if adapter.placement is Placement.ON_CUE and not request.cue:
            raise InvalidRequest(
                "cue", f"adapter {adapter.name!r} adds its prompt onto the answer cue; give one"
            )
        encoded = self._encode(request, choices, choice_field, mode)
        counts = tuple(len(options) for options in choices)
        return _Prepared(adapter, candidates, encoded, mode, request.scope, counts)

    # -- tokenisation ---------------------------------------------------------------------------

    def _tokens(self, text: str, field_name: str, limit: int, allow_empty: bool = False) -> tuple[int, ...]:
        tokens = self._token_cache.get(text)
        if tokens is None:
            tokens = tuple(self.bundle.tokenizer(text, add_special_tokens=False)["input_ids"])
            self._token_cache.put(text, tokens)
        if not tokens and not allow_empty:
            raise InvalidRequest(field_name, "encodes to no tokens")
        if len(tokens) > limit:
            raise InvalidRequest(field_name, f"{len(tokens)} tokens exceed the limit of {limit}")
        return tokens

    def _encode(
        self, request: ScoreRequest, choices: list[list[str]], choice_field: str, mode: ScoringMode
    ) -> _Encoded:
        limits = self.limits
        texts = [self._tokens(t, f"texts[{i}]", limits.max_text_tokens) for i, t in enumerate(request.texts)]
        cue = (
            self._tokens(request.cue, "cue", limits.max_text_tokens, allow_empty=True) if request.cue else ()
        )
        if choice_field == "shared_choices":  # one list for every text: encode it once
            encoded = [self._choice_tokens(choices[0], choice_field, mode)] * len(choices)
        else:
            encoded = [
                self._choice_tokens(options, f"{choice_field}[{index}]", mode)
                for index, options in enumerate(choices)
            ]
        return _Encoded(texts, cue, encoded)

    def _choice_tokens(self, options: list[str], field_name: str, mode: ScoringMode) -> list[tuple[int, ...]]:
        tokens = [
            self._tokens(option, f"{field_name}[{k}]", self.limits.max_choice_tokens)
            for k, option in enumerate(options)
        ]
        firsts = [option[0] for option in tokens]
        if mode is ScoringMode.FIRST_TOKEN and len(set(firsts)) != len(firsts):
            raise InvalidRequest(field_name, "two choices share their first token; use full-choice scoring")
        return tokens

    # -- scoring --------------------------------------------------------------------------------

    def _path(self, adapter: Adapter) -> _Path:
        if not adapter.prompt_length:
            return _Path.FLAT
        if adapter.placement is not Placement.PREFIX:
            return _Path.TEXT_STATES if self.reuse_text_states else _Path.FLAT
        if not adapter.reads_inputs and self.reuse_prefix_states:
            return _Path.PREFIX_STATES
        return _Path.FLAT

    def pooled_inputs(self, texts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Mean input embedding per tokenised text [texts, hidden]: what a generator reads, once per request."""
        device = self.bundle.device
        return torch.stack([self._embed(torch.tensor(ids, device=device)).mean(0) for ids in texts])

    def _score_group(self, group: list[_Prepared]) -> list[tuple[np.ndarray, int]]:
        """Score requests that share adapter, mode and cue in one set of length-sorted chunks.

        Rows carry group-wide candidate and example indices (requests laid end to end) and an
        ``owner``; scores are written back per owner.
        """
        adapter, mode, cue = group[0].adapter, group[0].mode, group[0].encoded.cue
        device, dtype = self.bundle.device, self.bundle.dtype
        full = mode is ScoringMode.FULL_CHOICE
        path = self._path(adapter)
        after_text = adapter.placement is not Placement.PREFIX
        texts = [text for prepared in group for text in prepared.encoded.texts]
        choices = [options for prepared in group for options in prepared.encoded.choices]
        z = torch.from_numpy(np.concatenate([prepared.candidates for prepared in group])).to(device, dtype)
        if adapter.reads_inputs:
            pooled = self.pooled_inputs(texts)
        else:  # the adapter ignores pooled inputs: skip the lookups
            pooled = z.new_zeros(len(texts), self.bundle.hidden_size)
        # Soft-prompt vectors inserted as tokens; ON_CUE adds them onto the cue's last tokens instead.
        inserted = 0 if adapter.placement is Placement.ON_CUE else adapter.prompt_length
        on_cue = min(adapter.prompt_length, len(cue)) if adapter.placement is Placement.ON_CUE else 0
        placed = _Placed(inserted, len(cue), on_cue)
        tokens = [0] * len(group)
        offsets, rows = self._plan(group, after_text, full)
        if path is _Path.TEXT_STATES:
            states: list[KVState] = []
            for owner, prepared in enumerate(group):
                owner_states, tokens[owner] = self._text_states(prepared.encoded.texts, prepared.scope)
                states += owner_states
            for row in rows:
                row.length = inserted + len(row.tokens)
            chunks = self._chunks(rows, lambda r: r.length + states[r.example].length)
        elif path is _Path.PREFIX_STATES:
            prefixes = self._prefix_states(adapter, z)
            for owner, prepared in enumerate(group):
                tokens[owner] = len(prepared.candidates) * prefixes[0].length
            for row in rows:
                row.length = len(row.tokens)
            chunks = self._chunks(rows, lambda r: r.length + prefixes[0].length)
        else:
            for row in rows:
                row.length = len(self._bos) + inserted + len(row.tokens)
                row.length += len(texts[row.example]) if after_text else 0
            chunks = self._chunks(rows, lambda r: r.length)
        scores = [
            torch.full((len(p.candidates), len(p.encoded.texts), max(p.choice_counts)), -torch.inf)
            for p in group
        ]
        for chunk in chunks:
            if path is _Path.TEXT_STATES:
                prompts = self._prompts(adapter, chunk, z, pooled)
                pasts = [states[row.example] for row in chunk]
                hidden, ends = self._forward_with_past(chunk, pasts, prompts, placed)
            elif path is _Path.PREFIX_STATES:
                pasts = [prefixes[row.candidate] for row in chunk]
                hidden, ends = self._forward_with_past(chunk, pasts, None, _Placed(0, 0, 0))
            else:
                prompts = self._prompts(adapter, chunk, z, pooled)
                heads = [texts[row.example] if after_text else () for row in chunk]
                hidden, ends = self._forward_flat(chunk, heads, prompts, placed)
            for row in chunk:
                tokens[row.owner] += row.length
            if full:
                values = read_full_choices(self._head, hidden, ends, chunk)
            else:
                values = read_first_tokens(self._head, hidden, ends, chunk, choices)
            _scatter(chunk, values, offsets, scores)
        return [
            (owner_scores.log_softmax(dim=-1).numpy().astype(np.float32, copy=False), owner_tokens)
            for owner_scores, owner_tokens in zip(scores, tokens, strict=True)
        ]

    def _plan(
        self, group: list[_Prepared], after_text: bool, full: bool
    ) -> tuple[list[tuple[int, int]], list[Row]]:
        """Every request's rows with group-wide indices, and each request's (candidate, example) offsets."""
        offsets: list[tuple[int, int]] = []
        rows: list[Row] = []
        first_candidate = first_example = 0
        for owner, prepared in enumerate(group):
            encoded = prepared.encoded
            # What each row runs after its cached or flat part: the text only when it comes after the
            # prompt (prefix placement), then the cue (and, in full mode, a choice).
            tails = [(() if after_text else text) + encoded.cue for text in encoded.texts]
            for row in plan_rows(len(prepared.candidates), tails, encoded.choices if full else None):
                row.candidate += first_candidate
                row.example += first_example
                row.owner = owner
                rows.append(row)
            offsets.append((first_candidate, first_example))
            first_candidate += len(prepared.candidates)
            first_example += len(encoded.texts)
        return offsets, rows

    def _chunks(self, rows: list[Row], width: Callable[[Row], int]) -> list[list[Row]]:
        return length_sorted_chunks(
            rows, self.batch_sequences, self.batch_tokens, width, sort=self.sort_by_length
        )

    def _prompts(
        self, adapter: Adapter, chunk: list[Row], z: torch.Tensor, pooled: torch.Tensor
    ) -> torch.Tensor:
        device = z.device
        if not adapter.prompt_length:
            return pooled.new_zeros(len(chunk), 0, pooled.shape[-1])
        candidates = torch.tensor([row.candidate for row in chunk], device=device)
        examples = torch.tensor([row.example for row in chunk], device=device)
        return adapter.soft_prompts(z[candidates], pooled[examples])

    def _forward_flat(
        self, chunk: list[Row], heads: list[tuple[int, ...]], prompts: torch.Tensor, placed: _Placed
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded: [pad][bos][head][soft prompt][tail]; every row ends at the last column."""
        device = self.bundle.device
        width = max(row.length for row in chunk)
        ids = torch.full((len(chunk), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        soft = torch.zeros((len(chunk), width), dtype=torch.bool)
        for index, (row, head) in enumerate(zip(chunk, heads, strict=True)):
            start = width - row.length
            before = self._bos + head
            mask[index, start:] = 1
            ids[index, start : start + len(before)] = torch.tensor(before, dtype=torch.long)
            prompt_at = start + len(before)
            soft[index, placed.span(prompt_at)] = True
            ids[index, prompt_at + placed.inserted :] = torch.tensor(row.tokens, dtype=torch.long)
        ids, mask, soft = ids.to(device), mask.to(device), soft.to(device)
        embeds = self._embed(ids)
        placed.apply(embeds, soft, prompts)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        output = self._backbone(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
        )
        return output.last_hidden_state, torch.full((len(chunk),), width - 1, dtype=torch.long)

    def _text_states(self, texts: list[tuple[int, ...]], scope: str) -> tuple[list[KVState], int]:
        """Keys and values of [bos][text] for each text, from the scope's cache or one batched pass."""
        states: list[KVState | None] = [self.text_states.get(scope, self._bos + text) for text in texts]
        missing = sorted({text for text, state in zip(texts, states, strict=True) if state is None}, key=len)
        computed: dict[tuple[int, ...], KVState] = {}
        tokens = 0
        for start in range(0, len(missing), self.batch_sequences):
            batch = missing[start : start + self.batch_sequences]
            sequences = [self._bos + text for text in batch]
            tokens += sum(map(len, sequences))
            for text, state in zip(batch, self._encode_states(sequences), strict=True):
                computed[text] = state
                self.text_states.put(scope, self._bos + text, state)
        result = [
            state if state is not None else computed[text] for text, state in zip(texts, states, strict=True)
        ]
        return result, tokens

    def _encode_states(self, sequences: list[tuple[int, ...]]) -> list[KVState]:
        layers, mask = encode_left_padded(self._backbone, sequences, self._pad_id, self.bundle.device)
        width = mask.shape[1]
        return [
            KVState(
                tuple(
                    (k[i, :, width - len(s) :].clone(), v[i, :, width - len(s) :].clone()) for k, v in layers
                )
            )
            for i, s in enumerate(sequences)
        ]

    def _prefix_states(self, adapter: Adapter, z: torch.Tensor) -> list[KVState]:
        """Keys and values of [bos][soft prompt] for each candidate: one pass, reused by all its examples."""
        device = self.bundle.device
        states: list[KVState] = []
        bos = torch.tensor(self._bos, dtype=torch.long, device=device)
        for start in range(0, len(z), self.batch_sequences):
            batch = z[start : start + self.batch_sequences]
            prompts = adapter.soft_prompts(batch, batch.new_zeros(len(batch), self.bundle.hidden_size))
            embeds = torch.cat([self._embed(bos).expand(len(batch), -1, -1), prompts.to(batch.dtype)], dim=1)
            positions = torch.arange(embeds.shape[1], device=device).expand(len(batch), -1)
            output = self._backbone(inputs_embeds=embeds, position_ids=positions, use_cache=True)
            layers = [(layer.keys, layer.values) for layer in output.past_key_values.layers]
            states += [KVState(tuple((k[i], v[i]) for k, v in layers)) for i in range(len(batch))]
        return states

    def _forward_with_past(
        self, chunk: list[Row], pasts: list[KVState], prompts: torch.Tensor | None, placed: _Placed
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's cached past (left-padded), then [soft prompt][tokens] right-padded after it."""
        device = self.bundle.device
        past = max(state.length for state in pasts)
        width = max(row.length for row in chunk)
        count = len(chunk)
        past_mask = torch.zeros((count, past), dtype=torch.long)
        new_mask = torch.zeros((count, width), dtype=torch.long)
        ids = torch.full((count, width), self._pad_id, dtype=torch.long)
        lengths = torch.zeros(count, dtype=torch.long)
        for index, (row, state) in enumerate(zip(chunk, pasts, strict=True)):
            past_mask[index, past - state.length :] = 1
            new_mask[index, : row.length] = 1
            ids[index, placed.inserted : row.length] = torch.tensor(row.tokens, dtype=torch.long)
            lengths[index] = state.length
        layers = []
        for layer in range(len(pasts[0].layers)):
            keys, values = (
                self._stack_left_padded([state.layers[layer][i] for state in pasts], past) for i in (0, 1)
            )
            layers.append((keys, values))
        cache = DynamicCache(ddp_cache_data=layers, config=self.bundle.model.config)
        embeds = self._embed(ids.to(device))
        if prompts is not None:
            soft = torch.zeros((count, width), dtype=torch.bool)
            soft[:, placed.span(0)] = True
            placed.apply(embeds, soft.to(device), prompts)
        mask = torch.cat([past_mask, new_mask], dim=1).to(device)
        positions = (lengths[:, None] + torch.arange(width)[None, :]).to(device)
        output = self._backbone(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        ends = torch.tensor([row.length - 1 for row in chunk], dtype=torch.long)
        return output.last_hidden_state, ends

    @staticmethod
    def _stack_left_padded(tensors: list[torch.Tensor], width: int) -> torch.Tensor:
        heads, _, dim = tensors[0].shape
        out = tensors[0].new_zeros(len(tensors), heads, width, dim)
        for index, tensor in enumerate(tensors):
            out[index, :, width - tensor.shape[1] :] = tensor
        return out


def _scatter(
    chunk: list[Row], values: torch.Tensor, offsets: list[tuple[int, int]], scores: list[torch.Tensor]
) -> None:
    """Write a chunk's per-row values (first-token logits [rows, choices], or full-choice totals [rows])
    into each owner's [candidates, examples, choices] scores."""
    owners = torch.tensor([row.owner for row in chunk])
    candidates = torch.tensor([row.candidate for row in chunk])
    examples = torch.tensor([row.example for row in chunk])
    choices = torch.tensor([row.choice for row in chunk])
    for owner in owners.unique().tolist():
        picked = owners == owner
        first_candidate, first_example = offsets[owner]
        target = scores[owner]
        where = (candidates[picked] - first_candidate, examples[picked] - first_example)
        if values.dim() == 1:
            target[(*where, choices[picked])] = values[picked]
        else:
            target[where] = values[picked][:, : target.shape[-1]]
