"""What keeps a domain's training rows away from every tested text: normalised and near-duplicate matching.

Training itself drops rows whose text hashes to an excluded one (``cbpt.server.training.domain``), which
catches copies up to whitespace. Collections that repackage a benchmark also change case, punctuation,
spacing around it, or add a tag or a link; ``NearDuplicates`` finds those: a training text matches a
protected one when their normalised forms are equal, or when most of the shorter one's word 3-grams
are in the other (containment, so a sentence quoted inside a longer tweet is caught too).
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

Row = dict[str, Any]
_WORD = re.compile(r"[a-z0-9]+")
_LINK = re.compile(r"https?://\S+")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words, links dropped: what two copies of a sentence share."""
    return _WORD.findall(_LINK.sub(" ", str(text).lower()))


def normalised(text: str) -> str:
    return " ".join(words(text))


def _grams(tokens: Sequence[str], n: int = 3) -> set[tuple[str, ...]]:
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


class NearDuplicates:
    """An index of protected texts; ``match`` says whether a text is a copy of one of them."""

    def __init__(
        self, texts: Iterable[str | tuple[str, str]], threshold: float = 0.7, min_words: int = 5
    ) -> None:
        """``texts``: protected texts, or (text, where it comes from) pairs, which ``origin`` reports."""
        self.threshold = threshold
        self.min_words = min_words
        self.exact: dict[str, str] = {}
        self.grams: list[set[tuple[str, ...]]] = []
        self.origins: list[str] = []
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for item in texts:
            text, origin = item if isinstance(item, tuple) else (item, "")
            tokens = words(text)
            if not tokens:
                continue
            self.exact.setdefault(" ".join(tokens), origin)
            if len(tokens) >= min_words:
                grams = _grams(tokens)
                for gram in grams:
                    self.index[gram].append(len(self.grams))
                self.grams.append(grams)
                self.origins.append(origin)

    def __len__(self) -> int:
        return len(self.exact)

    def match(self, text: str) -> tuple[str, str] | None:
        """('exact' or 'near', the matched text's origin), or None: 'exact' is the same normalised
        text, 'near' that most word 3-grams of the shorter of the two are in the other."""
        tokens = words(text)
        key = " ".join(tokens)
        if key in self.exact:
            return "exact", self.exact[key]
        if len(tokens) < self.min_words:
            return None
        grams = _grams(tokens)
        hits: Counter[int] = Counter()
        for gram in grams:
            hits.update(self.index.get(gram, ()))
        for candidate, shared in hits.most_common(5):
            if shared / min(len(grams), len(self.grams[candidate])) >= self.threshold:
                return "near", self.origins[candidate]
        return None


def drop_matches(
    rows: list[Row], fields: Sequence[str], protected: NearDuplicates
) -> tuple[list[Row], Counter[str]]:
    """The rows none of whose ``fields`` copies a protected text, and how many were dropped: by kind
    ('exact', 'near') and by kind and origin ('near:pubmedqa')."""
    kept, dropped = [], Counter[str]()
    for row in rows:
        matches = [found for field in fields if (found := protected.match(str(row.get(field, ""))))]
        if matches:
            kind, origin = min(matches)  # 'exact' before 'near'
            dropped[kind] += 1
            dropped[f"{kind}:{origin}"] += 1
        else:
            kept.append(row)
    return kept, dropped


def cut_words(text: str, max_words: int) -> str:
    """At most ``max_words`` words of ``text`` (about 1.3 tokens each), cut at a word, marked by '...'."""
    parts = str(text).split()
    return " ".join(parts) if len(parts) <= max_words else " ".join(parts[:max_words]) + " ..."


def balanced_test(rows: list[Row], total: int, seed: int = 0, label: str = "label") -> list[int]:
    """Indices of a fixed test part of ``total`` rows, as equal per label as the data allows."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    by_label: dict[Any, list[int]] = defaultdict(list)
    for index in order:
        by_label[rows[index][label]].append(index)
    chosen: list[int] = []
    while len(chosen) < min(total, len(rows)):
        for members in by_label.values():
            if members and len(chosen) < total:
                chosen.append(members.pop())
    return sorted(chosen)


def held_rows(rows: Iterable[Row], fields: Sequence[str], source: str) -> list[Row]:
    """Rows for a held-out file: each text field of each row as its own ``text`` (nothing else is hashed
    but the source's name, so a label or option can never knock out a training row)."""
    held = []
    for row in rows:
        for field in fields:
            value = row.get(field)
            if isinstance(value, str) and value.strip():
                held.append({"text": value, "source": source})
    return held
