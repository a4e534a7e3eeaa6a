"""Write the medical domain's training files and the texts it must never train on (all of PubMedQA above all).

    .venv/bin/python generators/medical/prepare.py [--datasets ../shared/datasets]
        [--sources DIR | --from-git OWNER/REPO=GITDIR ...] [--out generators/medical/data]

Sources (public GitHub files pinned by commit and sha256; downloaded into .cache/sources by default):

- MedMCQA (Pal et al. 2022; MIT) and MedQA USMLE 4-option (Jin et al. 2021; MIT), the sets published by
  xk-huang/medagents-benchmark (MIT): ``medmcqa``, ``medqa`` (per-row options; long case vignettes cut to
  220 words). That repository's PubMedQA subset is never used, and is protected instead;
- medical abstracts by condition (Schopf et al. 2022; CC BY-SA 3.0), sebischair/Medical-Abstracts-TC-Corpus
  (its labelled test file; the train file is not in the public snapshot): ``abstracts`` (5 classes, cut to
  200 words); its fixed 600-row test part is the benchmark's trained task;
- COVID-19 fake-news claims (Constraint@AAAI-2021, Patwa et al. 2021; the repository diptamath/covid_fake_news
  is MIT): ``covid`` (real / fake);
- unseen, benchmark only, never trained: PubMedQA (the shared ``pubmedqa`` set, MIT). Every PubMedQA copy
  found is protected: the shared rows, the 1000 expert-labelled rows in mosaicml/llm-foundry's eval data and
  medagents-benchmark's PubMedQA files (questions and contexts, matched normalised and near-duplicate).

Writes data/{medmcqa,medqa,abstracts,covid}.jsonl, abstracts-test.jsonl, held-out.jsonl, prepared.json.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from disjoint import FPB_ALL, TEST_SIZE, Prepared, command_line, finish, fpb_rows, shared_protected  # noqa: E402
from overlap import Row, cut_words  # noqa: E402
from sources import Reader, Source, run  # noqa: E402

MEDAGENTS = "xk-huang/medagents-benchmark"
ABSTRACTS = "sebischair/Medical-Abstracts-TC-Corpus"
COVID = "diptamath/covid_fake_news"
FOUNDRY = "mosaicml/llm-foundry"
_M = "56ca11eb1ef89f6bb7fad6284008bf39e08785b0"
SOURCES = (
    Source(
        "xk-huang",
        "medagents-benchmark",
        _M,
        "data/medmcqa/test.jsonl",
        "06193ed891b1f4ce1b93b3416f52ec731e8c7134b17a000f9219c031a929d716",
        "MedMCQA, MIT",
    ),
    Source(
        "xk-huang",
        "medagents-benchmark",
        _M,
        "data/medqa/test.jsonl",
        "b0536be0ff396be91eb0cf61a42056b0abef06a23e7e8be491d62fd959b77b72",
        "MedQA, MIT",
    ),
    Source(
        "sebischair",
        "Medical-Abstracts-TC-Corpus",
        "70a2d9106c724729be8b3c4ddb00d1b14ec300c8",
        "medical_tc_test.csv",
        "1eecea73c9ecad292c55e10403bd139fab9580545d6878482997c5564d51ac05",
        "Medical Abstracts TC Corpus, CC BY-SA 3.0",
    ),
    Source(
        "diptamath",
        "covid_fake_news",
        "030deba36d118c124709fd72d7d5f14c7bc69053",
        "data/Constraint_Train.csv",
        "441f3985bb76eb69d1e488cf292f80add96c4dddfa43ba7c060889607837ddce",
        "Constraint@AAAI-2021 COVID fake news; repository MIT",
    ),
    Source(
        "mosaicml",
        "llm-foundry",
        "8c8dd48f72168c5d51e2f7b151595892a8fba43d",
        "scripts/eval/local_data/reading_comprehension/pubmed_qa_labeled.jsonl",
        "60b94cdc8f507371366e1c28dfd0b86429da691ca0acc9dc83c9be6975ef0b41",
        "PubMedQA PQA-L, MIT: read only to keep it out of training",
    ),
    Source(
        "xk-huang",
        "medagents-benchmark",
        _M,
        "data/pubmedqa/test.jsonl",
        "6bdc49507bf4b9b0f9315f39b64bcc3e4361597d89e5e8b709966c027a2b60cd",
        "PubMedQA, MIT: read only to keep it out of training",
    ),
    Source(
        "xk-huang",
        "medagents-benchmark",
        _M,
        "data/pubmedqa/train.jsonl",
        "c5ee96f4aa7f97a662cb14962e2e17f80c416734802715341b99ee081193b50c",
        "PubMedQA, MIT: read only to keep it out of training",
    ),
    FPB_ALL,
)
QUESTION_WORDS = 220  # MedQA vignettes run to 250+ words; the question sentence is their end, kept
ABSTRACT_WORDS = 200
CLAIM_WORDS = 120  # a few claims are whole articles
CONDITIONS = {
    "1": "neoplasms",
    "2": "digestive",
    "3": "nervous",
    "4": "cardiovascular",
    "5": "general",
}


def _jsonl(reader: Reader, repo: str, path: str) -> list[Row]:
    return [json.loads(line) for line in reader.text(repo, path).splitlines() if line.strip()]


def multiple_choice(reader: Reader, path: str) -> list[Row]:
    rows = []
    for item in _jsonl(reader, MEDAGENTS, path):
        keys = sorted(item["options"])
        words = item["question"].split()
        question = (
            item["question"] if len(words) <= QUESTION_WORDS else "... " + " ".join(words[-QUESTION_WORDS:])
        )
        rows.append(
            {
                "question": question,
                "options": [str(item["options"][key]) for key in keys],
                "label": keys.index(item["answer_idx"]),
            }
        )
    return rows


def abstracts(reader: Reader) -> list[Row]:
    table = csv.DictReader(io.StringIO(reader.text(ABSTRACTS, SOURCES[2].path)))
    return [
        {
            "abstract": cut_words(row["medical_abstract"], ABSTRACT_WORDS),
            "label": CONDITIONS[row["condition_label"]],
        }
        for row in table
    ]


def covid(reader: Reader) -> list[Row]:
    table = csv.DictReader(io.StringIO(reader.text(COVID, SOURCES[3].path)))
    return [
        {"claim": cut_words(row["tweet"], CLAIM_WORDS), "label": row["label"]}
        for row in table
        if row["label"] in ("real", "fake")
    ]


def pubmedqa_copies(reader: Reader) -> list[Row]:
    """Every PubMedQA question and context in the public copies read here (protected, never trained)."""
    held = []
    for item in _jsonl(reader, FOUNDRY, SOURCES[4].path):
        context, _, rest = item["context"].rpartition("\nQuestion: ")
        held.append({"text": context.removeprefix("Context: "), "source": "pubmedqa-foundry"})
        held.append({"text": rest.split("\nA. ")[0], "source": "pubmedqa-foundry"})
    for source in SOURCES[5:7]:
        for item in _jsonl(reader, MEDAGENTS, source.path):
            context, _, question = item["question"].rpartition("\n")
            held += [
                {"text": text, "source": "pubmedqa-medagents"}
                for text in (item["question"], context, question)
                if text
            ]
    return held


def main(argv: list[str] | None = None) -> None:
    args, reader = command_line(__doc__, HERE / "data", SOURCES, argv)
    protected = shared_protected(args.datasets) + pubmedqa_copies(reader)
    protected += fpb_rows(reader)
    tasks = [
        Prepared("medmcqa", multiple_choice(reader, SOURCES[0].path), ("question",), MEDAGENTS),
        Prepared("medqa", multiple_choice(reader, SOURCES[1].path), ("question",), MEDAGENTS),
        Prepared("abstracts", abstracts(reader), ("abstract",), ABSTRACTS, test_size=TEST_SIZE),
        Prepared("covid", covid(reader), ("claim",), COVID),
    ]
    finish(args.out, tasks, protected, {}, SOURCES)


if __name__ == "__main__":
    run(main)
