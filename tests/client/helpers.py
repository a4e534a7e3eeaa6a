"""Data and task builders shared by the client tests (imported as tests.client.helpers).

Label names are deliberately distinctive ("LABEL_SECRET_A") and differ from the
choice strings sent to the server (" positive"), so a test can search the wire
bytes for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

LABELS = {"LABEL_SECRET_A": " positive", "LABEL_SECRET_B": " negative"}
_PHRASES = {
    "LABEL_SECRET_A": ["a gripping, funny and moving film", "warm and clever", "a joy from start to end"],
    "LABEL_SECRET_B": ["dull, slow and far too long", "a tired mess", "boring and loud"],
}

TaskFactory = Callable[..., Path]


def labelled_rows(per_class: int, offset: int = 0) -> list[dict[str, Any]]:
    rows = []
    for index in range(per_class):
        for label, phrases in _PHRASES.items():
            rows.append({"text": f"{phrases[index % len(phrases)]} #{index + offset}", "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_task(
    folder: Path,
    name: str = "task.yaml",
    *,
    task_name: str = "secret-sentiment",
    per_class: int = 12,
    test_per_class: int = 4,
    shots: int = 4,
    dev: int = 2,
    rows: list[dict[str, Any]] | None = None,
    **overrides: Any,
) -> Path:
    """data/train.jsonl, data/test.jsonl and a task file (YAML, or JSON by its suffix) naming them
    relative to itself, in ``folder``; returns the task file's path."""
    import yaml

    write_jsonl(folder / "data" / "train.jsonl", rows if rows is not None else labelled_rows(per_class))
    write_jsonl(folder / "data" / "test.jsonl", labelled_rows(test_per_class, offset=100))
    spec: dict[str, Any] = {
        "name": task_name,
        "data": {"train": "data/train.jsonl", "test": "data/test.jsonl"},
        "template": "Review: {text}\nSentiment:",
        "label_field": "label",
        "choices": dict(LABELS),
        "shots_per_class": shots,
        "dev_per_class": dev,
        "seed": 0,
        **overrides,
    }
    path = folder / name
    if name.endswith(".json"):
        path.write_text(json.dumps(spec), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path
