"""Generator training on a tiny model: it learns, serves what it trained, starts at zero-shot, resumes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cbpt.client.rpc.sdk import TuningClient
from cbpt.server.adapters import AdapterSpec
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.errors import ConfigError
from cbpt.server.front.app import serve_in_background
from cbpt.server.testing import tiny_bundle
from cbpt.server.training.domain import load_domain, text_digest
from cbpt.server.training.settings import TrainSettings
from cbpt.server.training.trainer import GeneratorTrainer, train_generator

GOOD = ["good", "great", "fine", "lovely", "nice"]
BAD = ["bad", "awful", "dull", "poor", "slow"]
TEMPLATE = "Review: {text}\nSentiment:"
CHOICES = {"negative": " negative", "positive": " positive"}


def _rows(count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.choice(["positive", "negative"])
        words = [*rng.sample(GOOD if label == "positive" else BAD, 2), rng.choice(["film", "movie", "plot"])]
        rows.append({"text": " ".join(words), "label": label})
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture
def domain_file(tmp_path: Path) -> Path:
    rows = _rows(160, seed=0)
    _write_jsonl(tmp_path / "reviews.jsonl", rows)
    _write_jsonl(tmp_path / "held.jsonl", [{"text": rows[0]["text"]}])
    (tmp_path / "domain.yaml").write_text(
        "domain: toy\nexclude: [held.jsonl]\ntasks:\n"
        "  - name: reviews\n    data: reviews.jsonl\n"
        f"    template: {json.dumps(TEMPLATE)}\n    choices: {json.dumps(CHOICES)}\n    dev_per_class: 10\n",
        encoding="utf-8",
    )
    return tmp_path / "domain.yaml"


def _settings(**overrides: object) -> TrainSettings:
    base = {"steps": 12, "batch_size": 8, "dimension": 16, "bottleneck": 8, "prompt_length": 4,
            "learning_rate": 3e-2, "warmup_steps": 2, "eval_every": 6, "checkpoint_every": 2}  # fmt: skip
    return TrainSettings(**(base | overrides))


def test_excluded_texts_never_enter_training(domain_file: Path) -> None:
    domain = load_domain(domain_file)
    held = json.loads((domain_file.parent / "held.jsonl").read_text())["text"]
    task = domain.tasks[0]
    assert task.dropped >= 1
    assert text_digest(held) in domain.excluded_digests
    seen = {text_digest(text.removeprefix("Review: ")) for text in (*task.train.texts, *task.dev.texts)}
    assert text_digest(held) not in seen


def test_domain_file_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("domain: Bad Name\ntasks: []\n")
    with pytest.raises(ConfigError, match="domain"):
        load_domain(tmp_path / "bad.yaml")
    (tmp_path / "nodata.yaml").write_text(
        f"domain: x\ntasks:\n  - name: t\n    template: {json.dumps(TEMPLATE)}\n"
    )
    with pytest.raises(ConfigError, match="task 't': give data"):
        load_domain(tmp_path / "nodata.yaml")


def test_training_learns_the_domain(domain_file: Path, tmp_path: Path) -> None:
    result = train_generator(
        tiny_bundle(0), domain_file, tmp_path / "out", _settings(steps=200, batch_size=16, eval_every=100)
    )
    history = [json.loads(line) for line in (tmp_path / "out" / "history.jsonl").read_text().splitlines()]
    dev = [row["dev"]["reviews"]["accuracy"] for row in history if "dev" in row]
    assert dev[0] <= 0.6  # the untrained generator: zero-shot on a random model, near chance
    assert result.best_dev_accuracy is not None and result.best_dev_accuracy >= 0.9
    card = json.loads((tmp_path / "out" / "generator.json").read_text())
    assert card["placement"] == "on_cue" and card["training"]["step"] == result.best_step
    assert card["training"]["tasks"][0]["data_sha256"] and card["training"]["dev_at_zero_shot"]


def test_untrained_on_cue_generator_is_exactly_zero_shot(domain_file: Path, tmp_path: Path) -> None:
    bundle = tiny_bundle(0)
    trainer = GeneratorTrainer(bundle, load_domain(domain_file), _settings(), tmp_path / "out")
    engine = ScoringEngine(
        bundle, [*ServedAdapters(bbt_dimension=16, shipped_generators=False).build(bundle), trainer.adapter]
    )
    texts = ["Review: good fine film", "Review: dull plot"]
    z = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    scored = engine.score(ScoreRequest("cbp-toy", z, texts, list(CHOICES.values()), cue="\nSentiment:"))
    zero_shot = engine.score(
        ScoreRequest("none", np.zeros((1, 0), np.float32), texts, list(CHOICES.values()), cue="\nSentiment:")
    )
    np.testing.assert_allclose(scored.log_probs, np.repeat(zero_shot.log_probs, 2, axis=0), atol=1e-6)


def test_served_generator_scores_what_training_scored(domain_file: Path, tmp_path: Path) -> None:
    bundle = tiny_bundle(0)
    trainer = GeneratorTrainer(bundle, load_domain(domain_file), _settings(steps=20), tmp_path / "out")
    trainer.run()
    task = trainer.domain.tasks[0]
    z = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    # The snapshot written is the best on dev; score that one in training as well.
    best = GeneratorTrainer(bundle, trainer.domain, trainer.settings, tmp_path / "other")
    best.generator.load_state_dict(type(trainer.generator).load(tmp_path / "out").state_dict())
    request = ScoreRequest(best.name, z, task.dev.texts, task.dev.choices, cue=task.dev.cue)
    with torch.no_grad():
        trained, _ = best.engine.log_probs([best.engine.prepare(request)])[0]
    spec = AdapterSpec(method="cbp", generator=tmp_path / "out")
    served_engine = ScoringEngine(
        bundle,
        ServedAdapters(specs=[AdapterSpec(method="none"), spec], shipped_generators=False).build(bundle),
    )
    with serve_in_background(served_engine) as target, TuningClient(target) as client:
        assert client.info().adapter("cbp-toy").placement == "on_cue"
        served = client.evaluate("cbp-toy", z, task.dev.texts, task.dev.choices, cue=task.dev.cue)
    np.testing.assert_allclose(served, trained.numpy(), atol=1e-4)


class _Killed(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_generator(domain_file: Path, tmp_path: Path) -> None:
    bundle = tiny_bundle(0)
    domain = load_domain(domain_file)
    for z_mode in ("noise", "task"):
        settings = _settings(z_mode=z_mode)
        straight = GeneratorTrainer(bundle, domain, settings, tmp_path / f"straight-{z_mode}")
        straight.run()

        def kill_at_five(report: object) -> None:
            if getattr(report, "step", 0) == 5:
                raise _Killed

        with pytest.raises(_Killed):
            GeneratorTrainer(bundle, domain, settings, tmp_path / f"resumed-{z_mode}").run(kill_at_five)
        resumed = GeneratorTrainer(bundle, domain, settings, tmp_path / f"resumed-{z_mode}")
        resumed.run()
        assert resumed.state.step == straight.state.step == settings.steps
        for name, parameter in straight.parameters.items():
            assert torch.equal(parameter, resumed.parameters[name]), name
        losses = [row["loss"] for row in straight.state.history if "loss" in row]
        assert losses == [row["loss"] for row in resumed.state.history if "loss" in row]


def test_no_text_state_outlives_its_step(domain_file: Path, tmp_path: Path) -> None:
    """A step scores only what it encodes itself: a state cached by an earlier step was computed in
    another batch (other padding, low bits differ on some CPUs), and a resumed run has no such cache."""
    trainer = GeneratorTrainer(tiny_bundle(0), load_domain(domain_file), _settings(steps=3), tmp_path / "o")
    trainer.run()
    assert trainer.engine.text_states.total_bytes == 0


def test_a_run_stopped_by_max_minutes_scores_its_last_step(domain_file: Path, tmp_path: Path) -> None:
    """A run cut short between evaluations still weighs what it trained: its last step is scored, and
    written out when it is the best so far (else a time-boxed run could end on the untrained generator)."""
    trainer = GeneratorTrainer(
        tiny_bundle(0), load_domain(domain_file), _settings(max_minutes=1e-6), tmp_path / "o"
    )
    result = trainer.run()
    assert not result.finished and 0 < trainer.state.step < trainer.settings.eval_every
    evaluated = [row["step"] for row in trainer.state.history if "dev" in row]
    assert evaluated == [0, trainer.state.step]


def test_resume_with_other_settings_is_refused(domain_file: Path, tmp_path: Path) -> None:
    bundle = tiny_bundle(0)
    domain = load_domain(domain_file)
    GeneratorTrainer(bundle, domain, _settings(steps=2), tmp_path / "out").run()
    with pytest.raises(ConfigError, match="another settings"):
        GeneratorTrainer(bundle, domain, _settings(steps=2, learning_rate=1e-3), tmp_path / "out").run()
