"""The domain generators' benchmark tasks: for each domain the unseen tasks and one trained task.

Unseen (no generator ever trains on them: every text is in the domain's held-out file): PIQA and
Balanced-COPA (commonsense, per-row options, scored as full choices) and PubMedQA (medical, yes / no /
maybe); Financial PhraseBank (financial) is ``fpb`` in ``accuracy_data``. Their fixed test part is cut
here, the same way as ``fpb``'s, and the rest is the pool a user's shots come from.

Trained (the domain trains on the task, never on its test part): BoolQ, medical abstracts and financial
tweets. Their test part is the one the domain's prepare.py held out (``data/<task>-test.jsonl``, excluded
from training by the domain file); the pool is the training file without those rows, and the task format
is the domain file's own, so the user's task is templated exactly as the generator was trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from benchmarks.accuracy_data import (
    POOL_RESERVE,
    BenchmarkData,
    MissingData,
    Row,
    hold_out,
    read_jsonl,
)
from cbpt.common.files import write_jsonl

GENERATORS = Path(__file__).resolve().parents[1] / "generators"
FULL_CHOICE = {"options_field": "options", "option_template": " {option}", "mode": "full_choice"}
PUBMEDQA = {"yes": " yes", "no": " no", "maybe": " maybe"}
UNSEEN: dict[str, tuple[str, str]] = {  # name -> (domain, template) of the per-row-option tasks
    "piqa": ("commonsense", "Goal: {goal}\nSolution:"),
    "copa": ("commonsense", "Premise: {premise}\nQuestion: {question}\nAnswer:"),
}
TRAINED = {"boolq": "commonsense", "abstracts": "medical", "fintweets": "financial"}
# The long field a user's task may cut to the server's limit: prepare.py already cut it to 200 words (within
# 512 SmolLM2 tokens, so nothing is cut there and the task is templated as trained); finer tokenizers cut.
LONG_FIELD = {"boolq": "passage", "abstracts": "abstract"}
_SHAPE_KEYS = ("options_field", "option_template", "mode", "truncate")


def _prepared(generators: Path, domain: str, name: str) -> Path:
    path = generators / domain / "data" / f"{name}.jsonl"
    if not path.is_file():
        raise MissingData(f"{path} not found (run generators/{domain}/prepare.py)")
    return path


def unseen(name: str, generators: Path, work: Path, test_size: int) -> BenchmarkData:
    domain, template = UNSEEN[name]
    rows = read_jsonl(_prepared(generators, domain, name))
    positions = sorted({row["label"] for row in rows})
    pool, test = hold_out(rows, positions, test_size, POOL_RESERVE)
    return BenchmarkData(
        name, template, None, write_jsonl(work / f"{name}-pool.jsonl", pool), tuple(test), FULL_CHOICE
    )


def pubmedqa(datasets: Path, work: Path, test_size: int) -> BenchmarkData:
    """PubMedQA's 500 shared expert-labelled rows: a balanced-as-possible test part, 48 per class kept."""
    rows = read_jsonl(datasets / "pubmedqa" / "train.jsonl")
    pool, test = hold_out(rows, list(PUBMEDQA), test_size, POOL_RESERVE)
    return BenchmarkData(
        "pubmedqa",
        "Context: {context}\nQuestion: {question}\nAnswer:",
        PUBMEDQA,
        write_jsonl(work / "pubmedqa-pool.jsonl", pool),
        tuple(test),
        {"truncate": {"field": "context", "max_tokens": 400}},
    )


def domain_task(generators: Path, domain: str, name: str) -> dict[str, Any]:
    """The task's entry in the domain file: its template, choices and shape as trained."""
    path = generators / domain / "domain.yaml"
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    for entry in spec["tasks"]:
        if entry["name"] == name:
            return dict(entry)
    raise MissingData(f"{path} has no task {name!r}")


def _key(row: Row, fields: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(" ".join(str(row.get(name, "")).split()) for name in fields)


def trained(name: str, generators: Path, work: Path, test_size: int) -> BenchmarkData:
    domain = TRAINED[name]
    entry = domain_task(generators, domain, name)
    test = read_jsonl(_prepared(generators, domain, f"{name}-test"))
    if test_size < len(test):  # a smaller test part, still as balanced as the labels allow
        test = hold_out(test, sorted({row["label"] for row in test}, key=str), test_size, 0)[1]
    fields = tuple(sorted({key for row in test for key in row if key != entry.get("label_field", "label")}))
    held = {_key(row, fields) for row in test}
    pool = [row for row in read_jsonl(_prepared(generators, domain, name)) if _key(row, fields) not in held]
    return BenchmarkData(
        name,
        entry["template"],
        entry.get("choices"),
        write_jsonl(work / f"{name}-pool.jsonl", pool),
        tuple(test),
        {key: entry[key] for key in _SHAPE_KEYS if key in entry}
        | ({"truncate": {"field": LONG_FIELD[name]}} if name in LONG_FIELD else {}),
    )


def load(name: str, datasets: Path, work: Path, test_size: int, generators: Path) -> BenchmarkData:
    if name in UNSEEN:
        return unseen(name, generators, work, test_size)
    if name == "pubmedqa":
        return pubmedqa(datasets, work, test_size)
    if name in TRAINED:
        return trained(name, generators, work, test_size)
    raise ValueError(f"unknown domain task {name!r}")
