"""Fitting texts to the server before anything is scored: the pre-flight check, and truncation on the client.

The client has no tokenizer, so it asks the server (``CountTokens``) how many tokens each text
makes. A text over the server's ``max_text_tokens`` (or ``max_text_chars``) is shortened as the
task's ``truncate`` says: one field of the template, from its end or its start, never the answer
cue (the cue travels separately and is counted on its own). Without ``truncate`` the first text
that does not fit is refused with its row and its length, before the first generation. The cut
is estimated from the text's characters per token and checked by counting again, a few times
at most, so every text that leaves the client is known to fit.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cbpt.common.errors import NotSupported, TaskError, TunerWarning
from cbpt.common.info import ServerInfo
from cbpt.common.tasks.task_format import Examples, Truncation

_ROUNDS = 8  # count-and-cut rounds before giving up on a text (two or three suffice in practice)
_SAFETY = 1.05  # cut a little more than the estimate, so most texts fit after one round


@dataclass(frozen=True)
class Fitted:
    """Examples whose every text fits the server, and how many had to be shortened."""

    examples: Examples
    truncated: int


def _limit(value: int | None) -> float:
    return float(value) if value else math.inf


def _refuse(where: str, row: int, what: str) -> TaskError:
    return TaskError(
        f"{where} row {row + 1}: {what}; add `truncate:` to the task file to shorten it "
        "(see the README, 'Long inputs')"
    )


def _cut(text: str, span: tuple[int, int], remove: int, side: str) -> tuple[str, tuple[int, int]]:
    """``text`` with ``remove`` characters taken from the field at ``span`` (its end or its start)."""
    start, end = span
    remove = min(remove, end - start)
    if side == "end":
        return text[: end - remove] + text[end:], (start, end - remove)
    return text[:start] + text[start + remove :], (start, end - remove)


class TokenCounter(Protocol):
    """What fitting asks of a server: its limits and its token counts (a ``TuningClient``; generator
    training answers from its own engine, so that it cuts texts exactly as a user's client does)."""

    target: str

    def info(self) -> ServerInfo: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


def fit_examples(client: TokenCounter, examples: Examples, truncate: Truncation | None, where: str) -> Fitted:
    """``examples`` with every text within the server's limits, or a TaskError naming the first row
    that cannot be made to fit (``where`` names the file or split in the message)."""
    if not len(examples):
        return Fitted(examples, 0)
    limits = client.info().limits
    max_tokens = min(_limit(limits.max_text_tokens), _limit(truncate.max_tokens if truncate else None))
    max_chars = _limit(limits.max_text_chars)
    texts = list(examples.texts)
    spans = list(examples.spans) if truncate is not None and examples.spans is not None else None
    shortened: set[int] = set()
    for index, text in enumerate(texts):  # characters first: the server refuses to count those
        if len(text) > max_chars:
            if spans is None or truncate is None:
                raise _refuse(
                    where,
                    examples.rows[index],
                    f"{len(text)} characters exceed the server's limit of {max_chars:g}",
                )
            texts[index], spans[index] = _cut(text, spans[index], len(text) - int(max_chars), truncate.side)
            shortened.add(index)
    try:
        counts = client.count_tokens([*texts, examples.cue] if examples.cue else texts)
    except NotSupported:
        warnings.warn(
            f"{client.target} cannot count tokens (an older server): texts over its token limit "
            "are caught only when scored",
            TunerWarning,
            stacklevel=2,
        )
        return Fitted(dataclasses.replace(examples, texts=tuple(texts)), len(shortened))
    if examples.cue and counts.pop() > max_tokens:
        raise TaskError(
            f"the template's answer cue alone exceeds the server's limit of {max_tokens:g} tokens"
        )
    for _ in range(_ROUNDS):
        over = [index for index, count in enumerate(counts) if count > max_tokens]
        if not over:
            return Fitted(
                dataclasses.replace(
                    examples, texts=tuple(texts), spans=None if spans is None else tuple(spans)
                ),
                len(shortened),
            )
        if spans is None or truncate is None:
            first = min(over, key=lambda index: examples.rows[index])  # in file order
            others = len(over) - 1
            more = f" (and {others} more text{'s' if others > 1 else ''})" if others else ""
            raise _refuse(
                where,
                examples.rows[first],
                f"{counts[first]} tokens exceed the server's limit of {max_tokens:g}{more}",
            )
        for index in over:
            start, end = spans[index]
            if start == end:
                raise TaskError(
                    f"{where} row {examples.rows[index] + 1}: {counts[index]} tokens even with field "
                    f"{truncate.field!r} emptied; the rest of the template exceeds {max_tokens:g} tokens"
                )
            per_token = len(texts[index]) / max(counts[index], 1)
            remove = max(1, math.ceil((counts[index] - max_tokens) * per_token * _SAFETY))
            texts[index], spans[index] = _cut(texts[index], spans[index], remove, truncate.side)
            shortened.add(index)
        recounted = client.count_tokens([texts[index] for index in over])
        for index, count in zip(over, recounted, strict=True):
            counts[index] = count
    raise TaskError(f"{where}: could not fit every text to {max_tokens:g} tokens in {_ROUNDS} rounds")
