"""The domain tasks of the accuracy benchmark on small synthetic prepared data (no model)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from benchmarks import accuracy_data, accuracy_domains


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_an_unseen_per_row_option_task_is_split_per_answer_position(tmp_path: Path) -> None:
    rows = [
        {
            "goal": f"goal {i}",
            "options": [f"right {i}", f"wrong {i}"][:: 1 if i % 3 else -1],
            "label": 0 if i % 3 else 1,
        }
        for i in range(300)
    ]
    _write(tmp_path / "gen" / "commonsense" / "data" / "piqa.jsonl", rows)
    data = accuracy_data.load("piqa", tmp_path / "none", tmp_path / "work", 60, tmp_path / "gen")
    assert data.choices is None and data.width == 2 and data.test_class_counts() == [30, 30]
    pool = [json.loads(line) for line in data.pool.read_text().splitlines()]
    assert not {row["goal"] for row in pool} & {row["goal"] for row in data.test_rows} and len(pool) == 240
    task = data.task(seed=1)
    train, dev = task.load()
    assert Counter(train.labels.tolist()) == {0: 16, 1: 16} and len(dev) == 16
    test = data.test(task)
    assert test.cue == "\nSolution:" and test.choices.of_example(0)[test.labels[0]].startswith(" right")
    assert task.mode == "full_choice"


def test_a_trained_task_uses_the_domain_format_and_its_prepared_test_part(tmp_path: Path) -> None:
    domain = tmp_path / "gen" / "financial"
    domain.mkdir(parents=True)
    entry = {
        "name": "fintweets",
        "data": "data/fintweets.jsonl",
        "template": "Tweet: {text}\nMarket sentiment:",
        "label_field": "label",
        "choices": {"bearish": " bearish", "bullish": " bullish", "neutral": " neutral"},
    }
    (domain / "domain.yaml").write_text(
        json.dumps({"domain": "financial", "tasks": [entry]}), encoding="utf-8"
    )
    rows = [{"text": f"tweet {i}", "label": ["bearish", "bullish", "neutral"][i % 3]} for i in range(150)]
    test = rows[:30]
    _write(domain / "data" / "fintweets.jsonl", rows)
    _write(domain / "data" / "fintweets-test.jsonl", test)
    data = accuracy_data.load("fintweets", tmp_path / "none", tmp_path / "work", 600, tmp_path / "gen")
    assert data.template == entry["template"] and data.choices == entry["choices"]
    assert list(data.test_rows) == test and data.test_class_counts() == [10, 10, 10]
    pool = [json.loads(line)["text"] for line in data.pool.read_text().splitlines()]
    assert len(pool) == 120 and not set(pool) & {row["text"] for row in test}
    smaller = accuracy_data.load("fintweets", tmp_path / "none", tmp_path / "w2", 9, tmp_path / "gen")
    assert smaller.test_class_counts() == [3, 3, 3]


def test_pubmedqa_keeps_a_pool_per_class_and_a_missing_domain_is_skipped(tmp_path: Path) -> None:
    rows = [
        {
            "id": str(i),
            "question": f"q {i}?",
            "context": f"context {i}",
            "label": ["yes", "no", "maybe"][i % 3],
        }
        for i in range(210)
    ]
    _write(tmp_path / "datasets" / "pubmedqa" / "train.jsonl", rows)
    data = accuracy_data.load("pubmedqa", tmp_path / "datasets", tmp_path / "work", 600)
    assert data.test_class_counts() == [22, 22, 22]  # 70 per class, 48 kept for shots and dev
    assert data.shape["truncate"]["field"] == "context" and data.task(0).truncate is not None
    with pytest.raises(accuracy_data.MissingData, match=r"prepare\.py"):
        accuracy_data.load("copa", tmp_path, tmp_path / "work", 600, tmp_path / "gen")
    assert set(accuracy_domains.UNSEEN) | set(accuracy_domains.TRAINED) | {"pubmedqa"} == set(
        accuracy_data.DOMAIN_TASKS
    )


def test_the_domain_methods_tune_the_generator_served_under_the_domain_name() -> None:
    methods = pytest.importorskip("benchmarks.accuracy_methods")
    for domain in ("commonsense", "medical", "financial"):
        assert methods.TUNED[f"cbp-{domain}"].served == f"cbp-{domain}"
        assert methods.TUNED[f"cbp-{domain}-bias"].overrides == {"fit_bias": True}
        assert f"cbp-{domain}-bias-calibrated" in methods.METHODS


def test_a_per_row_option_task_runs_end_to_end_scored_as_full_choices(tmp_path: Path) -> None:
    """Options sharing their first token: scored first-token the server refuses them, so this passes only
    when every call (zero-shot, the tuner, z = 0 with its bias) scores them in the task's full-choice mode."""
    accuracy = pytest.importorskip("benchmarks.accuracy")
    rows = [
        {
            "goal": f"how to do thing {i}",
            "options": [f"the good way {i}", f"the bad way {i}"][:: 1 - 2 * (i % 2)],
        }
        | {"label": i % 2}
        for i in range(120)
    ]
    _write(
        tmp_path / "gen" / "commonsense" / "data" / "copa.jsonl",
        [
            {"premise": r["goal"], "question": "Why?", "options": r["options"], "label": r["label"]}
            for r in rows
        ],
    )
    out = tmp_path / "out"
    accuracy.main(
        [
            *("--model", "tiny", "--tasks", "copa", "--methods", "majority,zero-shot,bbt-cue-bias,white-box"),
            *("--seeds", "0", "--budgets", "0,4", "--popsize", "4", "--test-size", "12"),
            *("--output", "acc", "--output-dir", str(out), "--datasets", str(tmp_path / "none")),
            *("--prepared", str(tmp_path / "gen")),
        ]
    )
    runs = json.loads((out / "acc.json").read_text())
    assert {(run["method"], run["calls"]) for run in runs} >= {
        ("zero-shot", 0),
        ("bbt-cue-bias", 0),
        ("bbt-cue-bias", 4),
    }
    assert all(len(run["predicted_class_counts"]) == 2 and run["test_class_counts"] == [6, 6] for run in runs)
    assert not [run for run in runs if run["method"].startswith("white-box")]  # fixed choices only
