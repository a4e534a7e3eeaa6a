"""The accuracy benchmark end to end on the tiny model: real gRPC server, real client and Tuner."""

from __future__ import annotations

import importlib
import json
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

RUN_KEYS = {
    "task": str,
    "method": str,
    "seed": int,
    "calls": int,
    "accuracy": float,
    "macro_f1": float,
    "predicted_class_counts": list,
    "seconds": float,
}
METHODS = [
    "majority",
    "zero-shot",
    "zero-shot-calibrated",
    "icl",
    "bbt",
    "bbt-suffix-bias",
    "bbt-cue-bias-ngopt",
    "bbt-cue-bias-r100",
    "cbp-opinion-bias",
    "white-box",
]
BLACK_BOX = {"bbt", "bbt-suffix-bias", "bbt-cue-bias-ngopt", "bbt-cue-bias-r100", "cbp-opinion-bias"}
PHRASES = {
    "negative": ["dull, slow and far too long", "a tired mess", "boring and loud"],
    "neutral": ["the phone is fine I guess", "it is a film", "the sky is blue"],
    "positive": ["a gripping, funny and moving film", "warm and clever", "a joy from start to end"],
}


def _import(name: str) -> ModuleType:
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    return importlib.import_module(f"benchmarks.{name}")


@pytest.fixture(scope="module")
def accuracy() -> ModuleType:
    return _import("accuracy")


def _rows(per_class: int, labels: list[str], offset: int = 0) -> list[dict[str, Any]]:
    return [
        {"text": f"{PHRASES[label][i % 3]} #{i + offset}", "label": label}
        for i in range(per_class)
        for label in labels
    ]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture
def datasets(tmp_path: Path) -> Path:
    """A synthetic copy of the shared datasets' layout: sst2 (2 classes) and financial_phrasebank (3)."""
    root = tmp_path / "datasets"
    _write(root / "sst2" / "train.jsonl", _rows(30, ["negative", "positive"]))
    _write(root / "sst2" / "dev.jsonl", _rows(8, ["negative", "positive"], offset=100))
    _write(root / "financial_phrasebank" / "train.jsonl", _rows(52, list(PHRASES)))
    return root


@pytest.fixture
def generator(tmp_path: Path) -> Path:
    """A tiny on-cue 'opinion' generator for the tiny model, served as cbp-opinion."""
    _import("accuracy")
    import torch

    from cbpt.server.adapters.generator import GeneratorConfig, PromptGenerator
    from cbpt.server.testing import tiny_bundle

    bundle = tiny_bundle(0)
    config = GeneratorConfig(bundle.fingerprint, bundle.hidden_size, bundle.embedding_std, bottleneck=8,
                             prompt_length=4, dimension=16, domain="opinion", placement="on_cue")  # fmt: skip
    torch.manual_seed(0)
    PromptGenerator(config).save(tmp_path / "opinion")
    return tmp_path / "opinion"


def _args(datasets: Path, out: Path, generator: Path, methods: list[str] = METHODS) -> list[str]:
    return [
        *("--model", "tiny", "--tasks", "sst2,fpb", "--methods", ",".join(methods)),
        *("--seeds", "0", "--budgets", "0,8,16", "--popsize", "4", "--test-size", "12"),
        *(
            "--output",
            "acc",
            "--output-dir",
            str(out),
            "--datasets",
            str(datasets),
            "--generator",
            str(generator),
        ),
    ]


def _reports(method: str) -> tuple[str, ...]:
    if method in BLACK_BOX:
        return (method, method + "-calibrated", method + "-prior")
    if method == "white-box":
        return (method, method + "-calibrated")
    if method == "zero-shot-calibrated":
        return (method, method + "-prior")
    if method == "icl":
        return (method, method + "-calibrated")
    return (method,)


def test_end_to_end_schema_budgets_resume_and_report(
    accuracy: ModuleType, datasets: Path, generator: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    accuracy.main(_args(datasets, out, generator))
    runs = json.loads((out / "acc.json").read_text())
    classes = {"sst2": 2, "fpb": 3}
    for run in runs:
        for key, kind in RUN_KEYS.items():
            assert isinstance(run[key], kind), (key, run)
        assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 <= run["macro_f1"] <= 1.0 and run["seconds"] >= 0
        counts = run["predicted_class_counts"]
        assert len(counts) == classes[run["task"]] and all(isinstance(c, int) for c in counts)
        assert (
            sum(counts) == 12
            and run["test_class_counts"] == [12 // classes[run["task"]]] * classes[run["task"]]
        )
    calls = Counter((run["task"], run["method"], run["calls"]) for run in runs)
    expected = {
        (task, name, budget): 1
        for task in classes
        for method in METHODS
        for name in _reports(method)
        for budget in ((0, 8, 16) if method in BLACK_BOX else (8, 16) if method == "white-box" else (0,))
    }
    assert dict(calls) == expected  # each tuned run is also reported calibrated and under the label prior
    zero = [run for run in runs if run["method"] == "cbp-opinion-bias" and run["calls"] == 0]
    assert zero and all(run["dev_accuracy"] is not None and run["placement"] == "on_cue" for run in zero)
    report = (out / "acc.md").read_text()
    assert "## Chosen on dev, reported on test" in report and "| cbp-opinion-bias | " in report
    optimizers = {run["method"]: run.get("optimizer") for run in runs}
    assert optimizers["bbt-cue-bias-ngopt"] == "ng:NGOpt" and optimizers["bbt"] == "cma"
    dimensions = {run["method"]: run.get("dimension") for run in runs}
    assert dimensions["bbt"] == 16 and dimensions["bbt-cue-bias-r100"] == 3  # 100/500 of the tiny default
    assert (out / "acc.md").is_file() and "tiny-llama-0" in (out / "acc.md").read_text()
    for task in classes:
        assert (out / f"acc-{task}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / ".data" / "sst2-pool.jsonl").exists() and (out / ".data" / "fpb-pool.jsonl").is_file()

    # Resume: a second run finds every (task, method, seed) and adds nothing.
    before = (out / "acc.json").read_text()
    capsys.readouterr()
    accuracy.main(_args(datasets, out, generator))
    assert (out / "acc.json").read_text() == before
    assert capsys.readouterr().out.count("skipped") == len(classes) * len(METHODS)

    # An interrupted run: only the missing (task, method, seed) is run again.
    kept = [run for run in runs if not (run["task"] == "fpb" and run["method"].startswith("bbt-suffix-bias"))]
    (out / "acc.json").write_text(json.dumps(kept))
    accuracy.main(_args(datasets, out, generator, ["zero-shot", "bbt-suffix-bias"]))
    again = json.loads((out / "acc.json").read_text())
    assert again[: len(kept)] == kept
    assert [(r["task"], r["method"], r["calls"]) for r in again[len(kept) :]] == [
        ("fpb", name, budget) for budget in (0, 8, 16) for name in _reports("bbt-suffix-bias")
    ]


def test_missing_data_is_skipped_with_a_message(
    accuracy: ModuleType, generator: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accuracy.main(_args(tmp_path / "nothing", tmp_path / "out", generator, ["zero-shot"]))
    printed = capsys.readouterr().out
    assert "skipping task sst2" in printed and "skipping task fpb" in printed and "no runs" in printed


def test_budgets_must_be_whole_generations(accuracy: ModuleType) -> None:
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--budgets", "10,20", "--popsize", "4"])


def test_hold_out_is_balanced_as_possible_and_keeps_a_pool() -> None:
    data = _import("accuracy_data")
    rows = _rows(60, ["negative", "neutral"]) + _rows(200, ["positive"], offset=1000)
    pool, test = data.hold_out(rows, ["negative", "neutral", "positive"], 150, reserve=48)
    counts = Counter(row["label"] for row in test)
    assert counts == {"negative": 12, "neutral": 12, "positive": 126}
    assert Counter(row["label"] for row in pool)["negative"] == 48
    assert not {row["text"] for row in pool} & {row["text"] for row in test}
    assert data.balanced_counts({"a": 3, "b": 100, "c": 100}, 10) == {"a": 3, "b": 4, "c": 3}


def test_tweets_split_is_fixed_balanced_and_disjoint(tmp_path: Path) -> None:
    data = _import("accuracy_data")
    try:
        tweets = data.tweets(tmp_path, 30)
    except data.MissingData as error:
        pytest.skip(str(error))
    assert tweets.test_class_counts() == [10, 10, 10]
    pool = {json.loads(line)["text"] for line in tweets.pool.read_text().splitlines()}
    assert not pool & {row["text"] for row in tweets.test_rows}
    assert data.tweets(tmp_path / "again", 30).test_rows == tweets.test_rows


def test_white_box_scores_exactly_as_the_engine_places_bbt_suffix() -> None:
    """[bos][text][prompt][cue]: the white-box scorer reproduces the engine's bbt-suffix log-probs."""
    torch = pytest.importorskip("torch")
    white_box = _import("white_box")
    from cbpt.server.adapters.served import ServedAdapters
    from cbpt.server.engine import ScoreRequest, ScoringEngine
    from cbpt.server.testing import tiny_bundle

    bundle = tiny_bundle(0)
    engine = ScoringEngine(
        bundle, ServedAdapters(bbt_dimension=16, prompt_length=4, shipped_generators=False).build(bundle)
    )
    texts, choices, cue = (
        ["Review: warm and clever", "Review: a tired mess #3"],
        [" negative", " positive"],
        "\nSentiment:",
    )
    z = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    served = engine.score(ScoreRequest("bbt-suffix", z, texts, choices, cue=cue)).log_probs[0]
    with torch.no_grad():
        prompt = engine.adapters["bbt-suffix"].soft_prompts(
            torch.from_numpy(z), torch.zeros(1, bundle.hidden_size)
        )[0]
    scorer = white_box.SoftPromptScorer(bundle, cue, choices)
    np.testing.assert_allclose(scorer.log_probs(prompt, texts), served, atol=1e-5)


def test_score_noise_runs_the_same_tuning_through_a_protected_server(
    accuracy: ModuleType, datasets: Path, tmp_path: Path
) -> None:
    """--score-noise: the same seeds and budgets, the server blurring its log-probs (tiny model)."""
    common = [
        *("--model", "tiny", "--tasks", "sst2", "--methods", "bbt-cue-bias", "--seeds", "0"),
        *("--budgets", "8,16", "--popsize", "4", "--test-size", "12", "--datasets", str(datasets)),
    ]
    settings = accuracy.server_settings(accuracy.parse_args([*common, "--score-noise", "0.5"]))
    protection = settings.protection
    assert (protection.score_noise, protection.score_noise_seed, protection.score_decimals) == (0.5, 0, None)
    assert accuracy.server_settings(accuracy.parse_args(common)).protection.score_noise == 0.0
    runs = {}
    for name, extra in (("off", []), ("noise", ["--score-noise", "0.5"])):
        accuracy.main([*common, *extra, "--output", name, "--output-dir", str(tmp_path)])
        runs[name] = [
            r for r in json.loads((tmp_path / f"{name}.json").read_text()) if r["method"] == "bbt-cue-bias"
        ]
    assert [r["calls"] for r in runs["off"]] == [r["calls"] for r in runs["noise"]] == [8, 16]
    assert all(r["score_noise"] == 0.5 for r in runs["noise"])  # each run says it was tuned through noise
    assert not any("score_noise" in r for r in runs["off"])


def test_a_named_generator_is_served_beside_one_of_the_same_domain(
    accuracy: ModuleType, datasets: Path, generator: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--generator NAME=DIR`` serves a second 'opinion' generator (a z-mode variant) under its own name."""
    assert accuracy.parse_args(["--generator", f"cbp-opinion-zmode-zero={generator}"]).generator == [
        ("cbp-opinion-zmode-zero", generator)
    ]
    assert accuracy.parse_args(["--generator", str(generator)]).generator == [(None, generator)]
    out = tmp_path / "results"
    methods = ["cbp-opinion-bias", "cbp-opinion-zmode-zero-bias", "cbp-opinion-zmode-task-bias"]
    args = _args(datasets, out, generator, methods)
    args[args.index("--tasks") + 1] = "sst2"
    accuracy.main([*args, "--generator", f"cbp-opinion-zmode-zero={generator}"])
    runs = [run for run in json.loads((out / "acc.json").read_text()) if run["calls"] == 16]
    by_method = {run["method"]: run for run in runs}
    assert {"cbp-opinion-bias", "cbp-opinion-zmode-zero-bias"} <= set(by_method)
    assert not any(method.startswith("cbp-opinion-zmode-task") for method in by_method)
    assert "no adapter 'cbp-opinion-zmode-task'" in capsys.readouterr().out
    assert (out / "acc-sst2-zmode.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # beside cbp-vs-bbt
    assert "| cbp-opinion-zmode-zero-bias | " in (out / "acc.md").read_text()
    # One generator under two names, one seed: the same tuning, the same scores.
    same = ("accuracy", "macro_f1", "predicted_class_counts", "dev_accuracy")
    assert [by_method["cbp-opinion-bias"][key] for key in same] == [
        by_method["cbp-opinion-zmode-zero-bias"][key] for key in same
    ]
