"""Request preparation: validate, then tokenise (through a bounded cache) into a ``Prepared`` request.

A prepared request is what the strategies run: token ids of each text, the cue and the choices,
with the candidates validated. Nothing here ever reaches disk. The token cache is bounded in
entries and in bytes, and holds only strings within their token limit: a refused string, or a
CountTokens text too long to score, is tokenised and forgotten.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from cbpt.common.limits import Limits
from cbpt.server.adapters import Adapter, Placement
from cbpt.server.engine.types import ScoreRequest, ScoringMode
from cbpt.server.errors import InvalidRequest, UnknownAdapter

Tokens = tuple[int, ...]

DEFAULT_TOKEN_CACHE_BYTES = 64 << 20
_ENTRY_OVERHEAD = 104  # the dict slot and the linked-list node of one OrderedDict entry
_INT_BYTES = 32  # a token id beyond the interpreter's small-int cache is its own object


def entry_bytes(text: str, tokens: Tokens) -> int:
    """Memory one cache entry holds: the text, the tuple and its ints (an upper bound)."""
    return sys.getsizeof(text) + sys.getsizeof(tokens) + _INT_BYTES * len(tokens) + _ENTRY_OVERHEAD


class TokenCache:
    """Bounded in-memory tokenisation cache, least recently used out first: at most ``capacity``
    entries and ``max_bytes`` bytes (``entry_bytes``); an entry larger than that is not kept."""

    def __init__(self, capacity: int, max_bytes: int = DEFAULT_TOKEN_CACHE_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.total_bytes = 0
        self._items: OrderedDict[str, tuple[Tokens, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, text: str) -> Tokens | None:
        item = self._items.get(text)
        if item is None:
            return None
        self._items.move_to_end(text)
        return item[0]

    def put(self, text: str, tokens: Tokens) -> None:
        size = entry_bytes(text, tokens)
        if size > self.max_bytes:
            return
        old = self._items.pop(text, None)
        if old is not None:
            self.total_bytes -= old[1]
        self._items[text] = (tokens, size)
        self.total_bytes += size
        while len(self._items) > self.capacity or self.total_bytes > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.total_bytes -= dropped


@dataclass
class Encoded:
    texts: list[Tokens]
    cue: Tokens
    choices: list[list[Tokens]]  # one list per text (a shared list is encoded once and repeated)


@dataclass
class Prepared:
    """A validated, tokenised request, ready to share forward passes with others like it."""

    adapter: Adapter
    candidates: np.ndarray
    encoded: Encoded
    mode: ScoringMode
    scope: str
    choice_counts: tuple[int, ...]

    @property
    def group_key(self) -> tuple[object, ScoringMode, Tokens]:
        """Requests with equal keys share chunks: same mode and cue, and the same adapter; or, for prompts
        placed after the text, any adapters with that placement and prompt length. Those rows differ only in
        their prompt, which each row takes from its own adapter, so tenants tuning different adapters (a
        domain generator and BBT, say) still share one forward pass."""
        adapter = self.adapter
        if adapter.prompt_length and adapter.placement is not Placement.PREFIX:
            return ("after-text", adapter.placement, adapter.prompt_length), self.mode, self.encoded.cue
        return adapter.name, self.mode, self.encoded.cue


def leading_special_tokens(tokenizer: Any) -> Tokens:
    """What the tokenizer puts before any text: BOS for Llama-2 style models, nothing for SmolLM2."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if with_special[len(with_special) - len(plain) :] != plain:
        return ()
    return tuple(with_special[: len(with_special) - len(plain)])


class Preparer:
    """Tokenises requests, checking what only the tokenizer can: the token limits (the door,
    ``front/validation.py``, checked every other limit before the request was queued)."""

    def __init__(
        self,
        tokenizer: Any,
        adapters: dict[str, Adapter],
        limits: Limits,
        cache_size: int,
        cache_bytes: int = DEFAULT_TOKEN_CACHE_BYTES,
    ) -> None:
        self.tokenizer = tokenizer
        self.adapters = adapters
        self.limits = limits
        self.cache = TokenCache(cache_size, cache_bytes)

    def __call__(self, request: ScoreRequest) -> Prepared:
        """Raises InvalidRequest naming the field (a token limit, or an adapter this engine lacks)."""
        adapter = self.adapters.get(request.adapter)
        if adapter is None:
            raise UnknownAdapter(request.adapter, list(self.adapters))
        candidates = np.asarray(request.candidates, dtype=np.float32)
        mode = ScoringMode(request.mode)
        encoded = self._encode(request, mode)
        counts = tuple(request.choices.counts(len(request.texts)))
        return Prepared(adapter, candidates, encoded, mode, request.scope, counts)

    def count(self, texts: list[str]) -> list[int]:
        """Token counts of ``texts`` as ``__call__`` would tokenise them (never refused for their token
        count: telling it is the point)."""
        return [self.count_one(text) for text in texts]

    def count_one(self, text: str) -> int:
        """One validated text's token count; cached only if the text is short enough to score."""
        return len(self._tokenise(text, self.limits.max_text_tokens))

    def _tokenise(self, text: str, limit: int) -> Tokens:
        """The text's tokens, cached only when within ``limit``: what is refused is not kept."""
        tokens = self.cache.get(text)
        if tokens is None:
            tokens = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(tokens) <= limit:
                self.cache.put(text, tokens)
        return tokens

    def tokens(self, text: str, field: str, limit: int, allow_empty: bool = False) -> Tokens:
        tokens = self._tokenise(text, limit)
        if not tokens and not allow_empty:
            raise InvalidRequest(field, "encodes to no tokens")
        if len(tokens) > limit:
            raise InvalidRequest.over_limit(field, len(tokens), "tokens", limit)
        return tokens

    def _encode(self, request: ScoreRequest, mode: ScoringMode) -> Encoded:
        limits = self.limits
        texts = [self.tokens(t, f"texts[{i}]", limits.max_text_tokens) for i, t in enumerate(request.texts)]
        cue = self.tokens(request.cue, "cue", limits.max_text_tokens, allow_empty=True) if request.cue else ()
        choices = request.choices
        encoded = [
            self._choice_tokens(options, choices.field_of(i), mode) for i, options in enumerate(choices.lists)
        ]
        return Encoded(texts, cue, encoded * len(texts) if choices.shared else encoded)

    def _choice_tokens(self, options: tuple[str, ...], field: str, mode: ScoringMode) -> list[Tokens]:
        tokens = [
            self.tokens(option, f"{field}[{k}]", self.limits.max_choice_tokens)
            for k, option in enumerate(options)
        ]
        firsts = [option[0] for option in tokens]
        if mode is ScoringMode.FIRST_TOKEN and len(set(firsts)) != len(firsts):
            raise InvalidRequest(field, "two choices share their first token; use full-choice scoring")
        return tokens
