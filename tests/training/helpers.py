"""Domain files of every task shape for the training tests, on the tiny model's vocabulary."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from cbpt.server.training.settings import TrainSettings

GOOD = ["good", "great", "fine", "lovely", "nice"]
BAD = ["bad", "awful", "dull", "poor", "slow"]
TEMPLATE = "Review: {text}\nSentiment:"
CUE = "\nSentiment:"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def reviews(count: int, seed: int) -> list[tuple[str, bool]]:
    """(text, is it positive) pairs: two sentiment words and a noun."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        positive = rng.random() < 0.5
        words = [*rng.sample(GOOD if positive else BAD, 2), rng.choice(["film", "movie", "plot"])]
        pairs.append((" ".join(words), positive))
    return pairs


def option_rows(count: int, seed: int, *, by_index: bool, extra: str = " maybe") -> list[dict[str, Any]]:
    """Per-row options in a shuffled order, a third (never right) option on every other row, so rows
    have two or three options; the label is the option's index or its text."""
    rng = random.Random(seed + 1)
    rows = []
    for number, (text, positive) in enumerate(reviews(count, seed)):
        options = ["positive", "negative"] + ([extra.strip()] if number % 2 else [])
        rng.shuffle(options)
        answer = "positive" if positive else "negative"
        rows.append(
            {"text": text, "options": options, "answer": options.index(answer) if by_index else answer}
        )
    return rows


def full_choice_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Rows for multi-token choices, scored by the sum over all their tokens."""
    return [{"text": text, "label": "pos" if positive else "neg"} for text, positive in reviews(count, seed)]


FULL_CHOICES = {"neg": " negative film", "pos": " positive film"}
SHARED_START = {
    "neg": " it is negative",
    "pos": " it is positive",
}  # first-token scoring cannot tell these apart

TASKS = {
    "fixed": {
        "template": TEMPLATE,
        "label_field": "label",
        "choices": {"negative": " negative", "positive": " positive"},
    },
    "options": {"template": TEMPLATE, "label_field": "answer", "options_field": "options"},
    "options_text": {"template": TEMPLATE, "label_field": "answer", "options_field": "options"},
    "full": {"template": TEMPLATE, "label_field": "label", "choices": FULL_CHOICES, "mode": "full_choice"},
}


def task_rows(shape: str, count: int, seed: int) -> list[dict[str, Any]]:
    if shape == "fixed":
        return [
            {"text": text, "label": "positive" if positive else "negative"}
            for text, positive in reviews(count, seed)
        ]
    if shape in ("options", "options_text"):
        return option_rows(count, seed, by_index=shape == "options")
    return full_choice_rows(count, seed)


def write_domain(
    folder: Path,
    shapes: list[str],
    *,
    count: int = 160,
    dev_per_class: int = 10,
    domain: str = "toy",
    **extra: Any,
) -> Path:
    """A domain file with one task per shape named (its data written beside it)."""
    entries = []
    for index, shape in enumerate(shapes):
        write_jsonl(folder / f"{shape}.jsonl", task_rows(shape, count, seed=index))
        entries.append(
            {"name": shape, "data": f"{shape}.jsonl", "dev_per_class": dev_per_class} | TASKS[shape] | extra
        )
    path = folder / "domain.yaml"
    path.write_text(json.dumps({"domain": domain, "tasks": entries}), encoding="utf-8")  # JSON is YAML
    return path


def settings(**overrides: object) -> TrainSettings:
    base = {"steps": 12, "batch_size": 8, "dimension": 16, "bottleneck": 8, "prompt_length": 4,
            "learning_rate": 3e-2, "warmup_steps": 2, "eval_every": 6, "checkpoint_every": 2}  # fmt: skip
    return TrainSettings(**(base | overrides))
