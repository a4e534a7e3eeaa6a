"""Write the commonsense domain's training files, its benchmark-only tasks and the texts it must never \
train on.

    .venv/bin/python generators/commonsense/prepare.py [--datasets ../shared/datasets]
        [--sources DIR | --from-git OWNER/REPO=GITDIR ...] [--out generators/commonsense/data]

Sources (public GitHub files pinned by commit and sha256; downloaded into .cache/sources by default):

- CommonsenseQA train (Talmor et al. 2019; MIT licence), the copy in kojima-takeshi188/zero_shot_cot:
  5 options a row -> ``csqa`` (per-row options);
- OpenBookQA train (Mihaylov et al. 2018; Apache-2.0), ARC Easy + Challenge train (Clark et al. 2018;
  CC BY-SA 4.0) and Social IQa dev (Sap et al. 2019; CC BY 4.0), as repackaged by
  AGI-Edgerunners/LLM-Adapters (Apache-2.0 code; the data keep their own licences): ``openbookqa``,
  ``arc`` (4 options), ``siqa`` (3 options);
- BoolQ validation with its passages (Clark et al. 2019; CC BY-SA 3.0), mosaicml/llm-foundry's eval copy:
  ``boolq`` (yes/no, passages cut to 200 words); its fixed 600-row test part is the benchmark's trained task;
- unseen, benchmark only, never trained: PIQA validation (Bisk et al. 2020; AFL-3.0, ybisk/ybisk.github.io)
  and Balanced-COPA dev (Roemmele et al. 2011, Kavumba et al. 2019; BSD-2 / MIT, Balanced-COPA).

Writes data/{csqa,openbookqa,arc,siqa,boolq}.jsonl (training), boolq-test.jsonl, piqa.jsonl, copa.jsonl,
held-out.jsonl (every text the domain file excludes) and prepared.json (what each source kept and lost).
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from disjoint import FPB_ALL, TEST_SIZE, Prepared, command_line, finish, fpb_rows, shared_protected  # noqa: E402
from overlap import Row, cut_words, held_rows  # noqa: E402
from sources import Reader, Source, run  # noqa: E402

CSQA = "kojima-takeshi188/zero_shot_cot"
ADAPTERS = "AGI-Edgerunners/LLM-Adapters"
FOUNDRY = "mosaicml/llm-foundry"
PIQA = "ybisk/ybisk.github.io"
COPA = "Balanced-COPA/Balanced-COPA.github.io"
_C, _A = "5ef330fcdeec0cd26aee27943504f91f8ec1c33c", "816657208af4db747803f87ba40a4c71383fed7a"
_F, _P = "8c8dd48f72168c5d51e2f7b151595892a8fba43d", "21edab439af693b961be2f069e8690a88d3b4e37"
SOURCES = (
    Source(
        "kojima-takeshi188",
        "zero_shot_cot",
        _C,
        "dataset/CommonsenseQA/train_rand_split.jsonl",
        "58ffa3c8472410e24b8c43f423d89c8a003d8284698a6ed7874355dedd09a2fb",
        "CommonsenseQA, MIT",
    ),
    Source(
        "AGI-Edgerunners",
        "LLM-Adapters",
        _A,
        "dataset/openbookqa/train.json",
        "a1e094eeea01f70c0baa880f37497b26700ae99b243927b9c529984de9b1fe90",
        "OpenBookQA, Apache-2.0",
    ),
    Source(
        "AGI-Edgerunners",
        "LLM-Adapters",
        _A,
        "dataset/ARC-Easy/train.json",
        "6a06cece3dec32f4fb1c1b0fc29dab14be7cf3053b417290dbc6cd845359f5ff",
        "ARC, CC BY-SA 4.0",
    ),
    Source(
        "AGI-Edgerunners",
        "LLM-Adapters",
        _A,
        "dataset/ARC-Challenge/train.json",
        "a9debff28aafed86a08211dc3584a3b6cb38edca8c56bb34cd5002ed54aeebfb",
        "ARC, CC BY-SA 4.0",
    ),
    Source(
        "AGI-Edgerunners",
        "LLM-Adapters",
        _A,
        "dataset/social_i_qa/test.json",
        "71543f41127451945379d106ffedaef502f1c8770dff6d2f543aca85e3080b1d",
        "Social IQa (dev split), CC BY 4.0",
    ),
    Source(
        "mosaicml",
        "llm-foundry",
        _F,
        "scripts/eval/local_data/reading_comprehension/boolq.jsonl",
        "454ff101e614370bb1807fe7ebbda6fdb57e794b9662cc1ccae211bf1ff626c8",
        "BoolQ (validation split), CC BY-SA 3.0",
    ),
    Source(
        "ybisk",
        "ybisk.github.io",
        _P,
        "piqa/data/valid.jsonl",
        "93503cc97c679e459b065c3d13e848282e44b2a25213985bed3e5d458abef72d",
        "PIQA, AFL-3.0 (benchmark only)",
    ),
    Source(
        "ybisk",
        "ybisk.github.io",
        _P,
        "piqa/data/valid-labels.lst",
        "b4192dc3a2a0363d9d60ccf79800cbbe2f32ebb17726efdde6970e0b8131bceb",
        "PIQA, AFL-3.0 (benchmark only)",
    ),
    Source(
        "Balanced-COPA",
        "Balanced-COPA.github.io",
        "6e031959f0df0620059cb03d708bfbefd38ee0ba",
        "downloads/balanced_copa/balacopa-dev-all.xml",
        "2091dce8a2923b8530804644780ebe01fd1ae30342eb2562a3821786274b5b25",
        "COPA BSD-2-Clause; Balanced-COPA MIT (benchmark only)",
    ),
    FPB_ALL,
)
PASSAGE_WORDS = 200  # about 260 tokens: the passage is cut, the question never
_PACKED = re.compile(
    r"^Please choose the correct answer to the question: (?P<question>.*?)\n\n"
    r"(?P<options>Answer1: .*?)\n\nAnswer format: (?P<format>[a-z0-9/]+)\s*$",
    re.S,
)
_OPTION = re.compile(r"\s*Answer\d+: ")


def csqa(reader: Reader) -> list[Row]:
    rows = []
    for line in reader.text(CSQA, SOURCES[0].path).splitlines():
        item = json.loads(line)
        keys = [choice["label"] for choice in item["question"]["choices"]]
        rows.append(
            {
                "question": item["question"]["stem"],
                "options": [choice["text"] for choice in item["question"]["choices"]],
                "label": keys.index(item["answerKey"]),
            }
        )
    return rows


def unpack(item: Row) -> Row | None:
    """One LLM-Adapters row ('Please choose ... Answer1: x Answer2: y ...') as question, options, label;
    None when it does not parse into as many options as its answer format names."""
    match = _PACKED.match(item["instruction"])
    if match is None:
        return None
    options = [option.strip() for option in _OPTION.split(match["options"])[1:]]
    names = match["format"].split("/")
    if len(options) != len(names) or item["answer"] not in names or not all(options):
        return None
    return {"question": match["question"].strip(), "options": options, "label": names.index(item["answer"])}


def adapters(reader: Reader, *paths: str) -> tuple[list[Row], int]:
    rows, failed = [], 0
    for path in paths:
        for item in json.loads(reader.text(ADAPTERS, path)):
            row = unpack(item)
            if row is None:
                failed += 1
            else:
                rows.append(row)
    return rows, failed


def boolq(reader: Reader) -> list[Row]:
    rows = []
    for line in reader.text(FOUNDRY, SOURCES[5].path).splitlines():
        item = json.loads(line)
        passage, _, question = item["query"].rpartition("\nQuestion: ")
        rows.append(
            {
                "passage": cut_words(passage.removeprefix("Passage: "), PASSAGE_WORDS),
                "question": question.strip(),
                "label": item["choices"][item["gold"]],
            }
        )
    return rows


def piqa(reader: Reader) -> list[Row]:
    items = [json.loads(line) for line in reader.text(PIQA, SOURCES[6].path).splitlines() if line.strip()]
    labels = [int(line) for line in reader.text(PIQA, SOURCES[7].path).split()]
    if len(items) != len(labels):
        raise SystemExit(f"error: PIQA has {len(items)} rows but {len(labels)} labels")
    return [
        {"goal": item["goal"], "options": [item["sol1"], item["sol2"]], "label": label}
        for item, label in zip(items, labels, strict=True)
    ]


def copa(reader: Reader) -> list[Row]:
    root = ElementTree.fromstring(reader.bytes(COPA, SOURCES[8].path))  # a pinned, hashed file
    question = {"cause": "What was the cause?", "effect": "What happened as a result?"}
    return [
        {
            "premise": item.findtext("p", "").strip(),
            "question": question[item.attrib["asks-for"]],
            "options": [item.findtext("a1", "").strip(), item.findtext("a2", "").strip()],
            "label": int(item.attrib["most-plausible-alternative"]) - 1,
        }
        for item in root.iter("item")
    ]


def main(argv: list[str] | None = None) -> None:
    args, reader = command_line(__doc__, HERE / "data", SOURCES, argv)
    obqa, obqa_failed = adapters(reader, SOURCES[1].path)
    arc, arc_failed = adapters(reader, SOURCES[2].path, SOURCES[3].path)
    siqa, siqa_failed = adapters(reader, SOURCES[4].path)
    print(
        f"unparsed LLM-Adapters rows dropped: openbookqa {obqa_failed}, arc {arc_failed}, siqa {siqa_failed}"
    )
    unseen = {"piqa": piqa(reader), "copa": copa(reader)}
    protected = shared_protected(args.datasets)
    protected += fpb_rows(reader)
    protected += held_rows(unseen["piqa"], ("goal",), "piqa") + held_rows(
        unseen["copa"], ("premise",), "copa"
    )
    for name, rows in unseen.items():  # their options too: a training question must not copy one
        protected += [{"text": option, "source": name} for row in rows for option in row["options"]]
    tasks = [
        Prepared("csqa", csqa(reader), ("question",), SOURCES[0].slug),
        Prepared("openbookqa", obqa, ("question",), ADAPTERS),
        Prepared("arc", arc, ("question",), ADAPTERS),
        Prepared("siqa", siqa, ("question",), ADAPTERS),
        Prepared("boolq", boolq(reader), ("passage", "question"), FOUNDRY, test_size=TEST_SIZE),
    ]
    finish(args.out, tasks, protected, unseen, SOURCES)


if __name__ == "__main__":
    run(main)
