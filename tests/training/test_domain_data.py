"""The domains' data code on small synthetic rows: pinned sources, near-duplicate matching, the prepare
step."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

GENERATORS = Path(__file__).resolve().parents[2] / "generators"
sys.path.insert(0, str(GENERATORS))

import disjoint  # noqa: E402
import overlap  # noqa: E402
import sources  # noqa: E402


def _prepare(domain: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{domain}_prepare", GENERATORS / domain / "prepare.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _source(data: bytes, path: str = "data/rows.jsonl") -> sources.Source:
    return sources.Source("someone", "repo", "a" * 40, path, hashlib.sha256(data).hexdigest())


def test_near_duplicates_catch_reworded_copies_and_spare_other_texts() -> None:
    fpb = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007 ."
    index = overlap.NearDuplicates([(fpb, "fpb"), ("Short one .", "fpb")])
    assert index.match(
        "operating profit rose to eur 13.1 mn from eur 8.7 mn in the corresponding period in 2007"
    ) == (
        "exact",
        "fpb",
    )
    tweet = "$XYZ Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the period in 2007 https://t.co/x"
    assert index.match(tweet) == ("near", "fpb")
    assert index.match("short ONE") == ("exact", "fpb")
    assert index.match("Operating profit fell sharply as sales of paper dropped in Finland this year") is None
    assert index.match("Short two") is None  # under min_words only exact copies count


def test_drop_matches_counts_by_kind_and_origin() -> None:
    index = overlap.NearDuplicates([("the cat sat on the warm mat today", "copa")])
    rows = [
        {"q": "The cat sat on the warm mat today!"},
        {"q": "a dog ran"},
        {"q": "x", "p": "the cat sat on the warm mat"},
    ]
    kept, dropped = overlap.drop_matches(rows, ("q", "p"), index)
    assert kept == [{"q": "a dog ran"}]
    assert dropped["exact"] == 1 and dropped["near"] == 1 and dropped["near:copa"] == 1


def test_balanced_test_is_fixed_and_balanced() -> None:
    rows = [{"label": "a"}] * 10 + [{"label": "b"}] * 100
    first = overlap.balanced_test(rows, 12)
    assert first == overlap.balanced_test(rows, 12)
    assert [rows[i]["label"] for i in first].count("a") == 6
    assert overlap.cut_words("one two three four", 2) == "one two ..."


def test_sources_are_checked_read_locally_and_copied_out_of_git(tmp_path: Path) -> None:
    data = b'{"text": "hello"}\n'
    source = _source(data)
    folder = tmp_path / "sources"
    with pytest.raises(sources.SourceError, match="not found"):
        sources.read(source, folder, download=False)
    source.local(folder).parent.mkdir(parents=True)
    source.local(folder).write_bytes(b"tampered")
    with pytest.raises(sources.SourceError, match="is not the pinned"):
        sources.read(source, folder, download=False)
    source.local(folder).write_bytes(data)
    assert sources.read(source, folder, download=False) == data
    assert source.url == f"https://raw.githubusercontent.com/someone/repo/{'a' * 40}/data/rows.jsonl"

    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "rows.jsonl").write_bytes(data)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "rows"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    pinned = sources.Source("someone", "repo", commit, "data/rows.jsonl", source.sha256)
    copy = tmp_path / "copy"
    reader = sources.Reader([pinned], copy, [f"someone/repo={repo / '.git'}"])
    assert reader.text("someone/repo", "data/rows.jsonl") == data.decode()
    wrong = sources.Source("someone", "repo", commit, "data/rows.jsonl", "0" * 64)
    with pytest.raises(sources.SourceError, match="is not the pinned"):
        sources.fill_from_git([wrong], "someone/repo", repo / ".git", tmp_path / "other")
    with pytest.raises(sources.SourceError, match="OWNER/REPO=GITDIR"):
        sources.Reader([pinned], copy, ["someone/repo"])


def test_finish_drops_protected_copies_holds_out_a_test_part_and_reports(tmp_path: Path) -> None:
    protected = [{"text": "Sales of the paper unit fell by a fifth in the third quarter .", "source": "fpb"}]
    rows = [
        {"text": f"distinct headline number {i} about gold prices", "label": "ab"[i % 2]} for i in range(40)
    ]
    rows += [{"text": "RT: sales of the paper unit fell by a fifth in the third quarter!", "label": "a"}]
    rows += [{"text": "distinct headline number 3 about gold prices today", "label": "b"}]  # near a test row?
    task = disjoint.Prepared("heads", rows, ("text",), "someone/repo", cap=100, test_size=10)
    summary = disjoint.finish(
        tmp_path, [task], protected, {"unseen": [{"q": "never trained", "label": 0}]}, []
    )
    counts = summary["tasks"]["heads"]
    assert (
        counts["rows_read"] == 42
        and counts["dropped_near"] == 1
        and counts["dropped_by_origin"] == {"near:fpb": 1}
    )
    written = [json.loads(line) for line in (tmp_path / "heads.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (tmp_path / "heads-test.jsonl").read_text().splitlines()]
    assert len(test) == 10 and sorted(row["label"] for row in test) == ["a"] * 5 + ["b"] * 5
    assert (
        written[:10] == test
        and counts["rows_written"] == len(written) == 41 - counts["dropped_near_test_part"]
    )
    held = {json.loads(line)["text"] for line in (tmp_path / "held-out.jsonl").read_text().splitlines()}
    assert protected[0]["text"] in held and {row["text"] for row in test} <= held
    assert (tmp_path / "unseen.jsonl").is_file() and json.loads((tmp_path / "prepared.json").read_text())[
        "unseen"
    ]


def test_llm_adapters_rows_unpack_or_are_refused() -> None:
    commonsense = _prepare("commonsense")
    packed = (
        "Please choose the correct answer to the question: Which is a metal?\n\n"
        "Answer1: wood Answer2: iron Answer3: glass\n\nAnswer format: answer1/answer2/answer3"
    )
    row = commonsense.unpack({"instruction": packed, "answer": "answer2"})
    assert row == {"question": "Which is a metal?", "options": ["wood", "iron", "glass"], "label": 1}
    broken = packed.replace("Answer3: glass", "")
    assert commonsense.unpack({"instruction": broken, "answer": "answer2"}) is None


def test_a_tweet_copy_with_swapped_labels_is_refused() -> None:
    financial = _prepare("financial")
    rows = [
        {"text": "X downgraded at Y", "label": "bearish"},
        {"text": "Z upgraded at W", "label": "bullish"},
    ]
    financial.check_tweet_labels(rows)
    swapped = [
        {"text": row["text"], "label": {"bearish": "bullish", "bullish": "bearish"}[row["label"]]}
        for row in rows
    ]
    with pytest.raises(SystemExit, match="swapped"):
        financial.check_tweet_labels(swapped)
