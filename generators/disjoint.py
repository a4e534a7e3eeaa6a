"""The texts no generator may train on, and the step every domain's prepare.py ends with.

Protected everywhere: every Financial PhraseBank sentence of every agreement level (the public
``Sentences_50Agree.txt`` holds them all: the 66/75/100% files are its subsets), the SST-2 dev split, and
PubMedQA (the shared expert-labelled rows, question and context). A domain adds its own unseen tasks and
the test part of its held-out trained task. ``finish`` drops every training row that copies a protected
text (normalised or near-duplicate, ``overlap.NearDuplicates``), caps each task, writes the training
files, the held-out file the domain's ``exclude`` names (so training drops exact copies again, counted),
and ``prepared.json``: what each source kept and lost.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from overlap import NearDuplicates, Row, balanced_test, drop_matches, held_rows
from sources import Reader, Source, add_arguments

from cbpt.common.files import write_jsonl
from cbpt.common.tasks.loaders import load_jsonl

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = ROOT.parent / "shared" / "datasets"
FPB_ALL = Source(
    "pkatwate",
    "finBERT",
    "5ca56265657fe3fc2fd6c3576aa3933f61b7a5bc",
    "Sentences_50Agree.txt",
    "62bfa1a67f7b476a7e67fda3213d8d7f6890f5aaccdbc747c7555b94fc6cd171",
    "Financial PhraseBank v1.0 (Malo et al. 2014), CC BY-NC-SA 3.0: read only to keep it out of training",
)
TEST_SIZE = 600  # the benchmark's test part of a held-out trained task
SPLIT_SEED = 0


@dataclass
class Prepared:
    """One training task's rows and the fields its template reads (the ones matched and excluded)."""

    name: str
    rows: list[Row]
    fields: Sequence[str]
    source: str
    cap: int = 10_000
    test_size: int = 0  # rows held out as the benchmark's fixed test part (balanced per label)


def fpb_sentences(reader: Reader) -> list[str]:
    """Every Financial PhraseBank sentence (lines ``sentence@label`` of the 50%-agreement file)."""
    lines = reader.text(FPB_ALL.slug, FPB_ALL.path).splitlines()
    return [line.rsplit("@", 1)[0].strip() for line in lines if line.strip()]


def shared_protected(datasets: Path) -> list[Row]:
    """SST-2 dev, PubMedQA (question and context) and the all-agree FPB rows of the shared datasets."""
    paths = {
        "sst2-dev": (datasets / "sst2" / "dev.jsonl", ("text",)),
        "pubmedqa": (datasets / "pubmedqa" / "train.jsonl", ("question", "context")),
        "financial-phrasebank": (datasets / "financial_phrasebank" / "train.jsonl", ("text",)),
    }
    held: list[Row] = []
    for source, (path, fields) in paths.items():
        if not path.is_file():
            raise SystemExit(f"error: {path} not found (pass --datasets, the shared datasets folder)")
        held += held_rows(load_jsonl(path), fields, source)
    return held


def finish(
    out: Path,
    tasks: Sequence[Prepared],
    protected: Iterable[Row],
    unseen: dict[str, list[Row]],
    sources: Sequence[Source],
) -> dict:
    """Drop, cap and write everything; return (and write as prepared.json) the counts."""
    protected = list(protected)
    index = NearDuplicates((row["text"], row["source"]) for row in protected)
    summary: dict = {"protected_texts": len(index), "tasks": {}, "unseen": {}, "sources": []}
    held = list(protected)
    for name, rows in unseen.items():
        write_jsonl(out / f"{name}.jsonl", rows)
        summary["unseen"][name] = len(rows)
    for task in tasks:
        before = len(task.rows)
        kept, dropped = drop_matches(task.rows, task.fields, index)
        if len(kept) > task.cap:  # a seeded sample in file order, not the file's first rows
            keep = set(random.Random(SPLIT_SEED).sample(range(len(kept)), task.cap))
            kept = [row for i, row in enumerate(kept) if i in keep]
        capped = kept
        test: list[Row] = []
        if task.test_size:
            chosen = set(balanced_test(kept, task.test_size, SPLIT_SEED))
            test = [row for i, row in enumerate(kept) if i in chosen]
            write_jsonl(out / f"{task.name}-test.jsonl", test)
            held += held_rows(test, task.fields, f"{task.name}-test")
            # near copies of a test row (templated tweets, reworded headlines) leave training too
            near_test = NearDuplicates(str(row[f]) for row in test for f in task.fields)
            rest, copies = drop_matches(
                [row for i, row in enumerate(kept) if i not in chosen], task.fields, near_test
            )
            dropped["near-test"] = copies["exact"] + copies["near"]
            capped = test + rest
        write_jsonl(out / f"{task.name}.jsonl", capped)
        summary["tasks"][task.name] = {
            "source": task.source,
            "rows_read": before,
            "dropped_exact": dropped["exact"],
            "dropped_near": dropped["near"],
            "dropped_near_test_part": dropped["near-test"],
            "dropped_by_origin": {k: n for k, n in sorted(dropped.items()) if ":" in k},
            "rows_written": len(capped),
            "test_rows": len(test),
        }
    write_jsonl(out / "held-out.jsonl", held)
    summary["held_out_texts"] = len(held)
    summary["sources"] = [
        {"repo": s.slug, "commit": s.commit, "path": s.path, "sha256": s.sha256, "licence": s.licence}
        for s in sources
    ]
    (out / "prepared.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    for name, counts in summary["tasks"].items():
        print(
            f"{name}: read {counts['rows_read']}, dropped {counts['dropped_exact']} exact + "
            f"{counts['dropped_near']} near copies of protected texts, wrote {counts['rows_written']}"
            + (
                f" ({counts['test_rows']} of them the held-out test part; "
                f"{counts['dropped_near_test_part']} copies of a test row dropped)"
                if counts["test_rows"]
                else ""
            )
        )
    for name, count in summary["unseen"].items():
        print(f"{name}: {count} rows for the benchmark only (all in held-out.jsonl, never trained)")
    return summary


def command_line(
    doc: str | None, out: Path, sources: Sequence[Source], argv: list[str] | None
) -> tuple[argparse.Namespace, Reader]:
    """A domain's prepare.py options (--datasets, --out, where the pinned sources come from) and its
    reader."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--out", type=Path, default=out)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return args, Reader(sources, args.sources, args.from_git)


def fpb_rows(reader: Reader) -> list[Row]:
    """Every Financial PhraseBank sentence of every agreement level, as protected rows."""
    return [{"text": text, "source": "financial-phrasebank-50"} for text in fpb_sentences(reader)]
