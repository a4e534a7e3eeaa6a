"""Generator training on every task shape the client tunes: fixed choices, per-row options (label as
index or as text, rows with different option counts), full-choice options, and all of them mixed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cbpt.client.rpc.sdk import TuningClient
from cbpt.server import cli
from cbpt.server.adapters import AdapterSpec
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoringEngine
from cbpt.server.errors import ConfigError
from cbpt.server.front.app import serve_in_background
from cbpt.server.testing import tiny_bundle
from cbpt.server.training import shapes
from cbpt.server.training.domain import load_domain
from cbpt.server.training.trainer import GeneratorTrainer
from tests.training.helpers import SHARED_START, TASKS, settings, task_rows, write_domain, write_jsonl


def _losses(trainer: GeneratorTrainer, task: str | None = None) -> list[float]:
    return [row["loss"] for row in trainer.state.history if "loss" in row and task in (None, row["task"])]


def _dev(trainer: GeneratorTrainer, task: str) -> list[float]:
    return [row["dev"][task]["accuracy"] for row in trainer.state.history if "dev" in row]


# Settings under which the tiny model learns the toy sentiment within a few dozen steps.
LEARNS = {"batch_size": 16, "bottleneck": 32, "checkpoint_every": 1000}


def test_a_label_may_be_the_options_index_or_its_text(tmp_path: Path) -> None:
    (tmp_path / "index").mkdir(), (tmp_path / "text").mkdir()
    by_index = load_domain(write_domain(tmp_path / "index", ["options"])).tasks[0]
    by_text = load_domain(write_domain(tmp_path / "text", ["options_text"])).tasks[0]
    first = [json.loads(path.read_text().splitlines()[0])["answer"]
             for path in (tmp_path / "index" / "options.jsonl",
                          tmp_path / "text" / "options_text.jsonl")]  # fmt: skip
    assert isinstance(first[0], int) and isinstance(first[1], str)
    assert by_index.train.labels is not None and by_text.train.labels is not None
    np.testing.assert_array_equal(by_index.train.labels, by_text.train.labels)
    assert by_index.train.choices == by_text.train.choices and by_index.train.texts == by_text.train.texts


@pytest.mark.parametrize("shape", ["options", "full"])  # fixed choices: test_training.py
def test_each_shape_trains(shape: str, tmp_path: Path) -> None:
    domain = load_domain(write_domain(tmp_path, [shape]))
    task = domain.tasks[0]
    if shape == "options":
        assert not task.train.choices.shared and {len(o) for o in task.train.choices.lists} == {2, 3}
    trainer = GeneratorTrainer(
        tiny_bundle(0), domain, settings(steps=80, eval_every=40, **LEARNS), tmp_path / "out"
    )
    trainer.run()
    losses = _losses(trainer)
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.03
    dev = _dev(trainer, shape)
    assert max(dev) > dev[0] and max(dev) >= 0.75
    metrics = trainer.state.history[-1]["dev"][shape]
    assert 0 < metrics["macro_f1"] <= 1


def test_a_mixed_domain_trains_every_task(tmp_path: Path) -> None:
    """Fixed choices, per-row options (two or three) and full-choice strings in one domain, one task a
    step."""
    domain = load_domain(write_domain(tmp_path, ["fixed", "options", "full"]))
    trainer = GeneratorTrainer(
        tiny_bundle(0), domain, settings(steps=120, eval_every=60, **LEARNS), tmp_path / "out"
    )
    trainer.run()
    for task in ("fixed", "options", "full"):
        losses = _losses(trainer, task)
        assert len(losses) >= 20, task
        assert np.mean(losses[-8:]) < np.mean(losses[:8]), task
        dev = _dev(trainer, task)
        assert max(dev) > dev[0], task
    card = json.loads((tmp_path / "out" / "generator.json").read_text())
    recorded = {task["name"]: task for task in card["training"]["tasks"]}
    assert recorded["options"]["options_field"] == "options" and recorded["full"]["mode"] == "full_choice"
    assert "options_field" not in recorded["fixed"] and recorded["fixed"]["mode"] == "first_token"


def test_served_generator_scores_options_and_full_choice_as_trained(tmp_path: Path) -> None:
    bundle = tiny_bundle(0)
    domain = load_domain(write_domain(tmp_path, ["options", "full"]))
    trainer = GeneratorTrainer(bundle, domain, settings(steps=20), tmp_path / "out")
    trainer.run()
    best = GeneratorTrainer(bundle, domain, trainer.settings, tmp_path / "other")
    best.generator.load_state_dict(type(trainer.generator).load(tmp_path / "out").state_dict())
    z = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    trained = {}
    for task in domain.tasks:
        prepared = best.engine.prepare(shapes.request(best.name, task, task.dev, z, "dev"))
        with torch.no_grad():
            trained[task.name] = best.engine.log_probs([prepared])[0][0].numpy()
    spec = AdapterSpec(method="cbp", generator=tmp_path / "out")
    served_engine = ScoringEngine(
        bundle,
        ServedAdapters(specs=[AdapterSpec(method="none"), spec], shipped_generators=False).build(bundle),
    )
    with serve_in_background(served_engine) as target, TuningClient(target) as client:
        for task in domain.tasks:
            dev = task.dev
            served = client.evaluate("cbp-toy", z, dev.texts, dev.choices, mode=task.format.mode, cue=dev.cue)
            assert served.shape == trained[task.name].shape
            np.testing.assert_allclose(served, trained[task.name], atol=1e-4)
    options = trained["options"]
    assert np.isinf(options).any() and np.isfinite(options).sum(-1).min() == 2  # rows of 2 and 3 options
    # Full-choice scores are not the first token's: " it is ..." shares its first tokens.
    assert np.abs(trained["full"][..., 0] - trained["full"][..., 1]).max() > 0


def test_rows_the_engine_would_refuse_are_left_out_and_counted(tmp_path: Path) -> None:
    """An option over 16 tokens (or 20 options) would stop a run hours in: such rows are dropped at the
    start and counted; a task left with no row, or whose shared choices cannot be scored, is refused."""
    bundle = tiny_bundle(0)
    rows = task_rows("options", 40, seed=0)
    for row in rows[::4]:
        row["options"] = [*row["options"], "good " * 20]  # 20+ tokens
    rows[1]["options"] = [f"option {i}" for i in range(20)] + rows[1]["options"]
    rows[1]["answer"] = 20
    write_jsonl(tmp_path / "options.jsonl", rows)
    entry = {"name": "options", "data": "options.jsonl", "dev_per_class": 2, **TASKS["options"]}
    (tmp_path / "long.yaml").write_text(json.dumps({"domain": "toy", "tasks": [entry]}))
    domain = load_domain(tmp_path / "long.yaml")
    trainer = GeneratorTrainer(bundle, domain, settings(steps=2), tmp_path / "out")
    task = trainer.domain.tasks[0]
    assert task.over_limits == 11 and len(task.train) + len(task.dev) == 40 - 11
    assert all(len(options) <= 3 for options in (*task.train.choices.lists, *task.dev.choices.lists))
    trainer.run()
    card = json.loads((tmp_path / "out" / "generator.json").read_text())
    assert card["training"]["tasks"][0]["dropped_over_limits"] == 11

    path = write_domain(tmp_path, ["full"], mode="first_token", choices=SHARED_START)
    with pytest.raises(ConfigError, match=r"task 'full' \(full.jsonl\): two choices share their first token"):
        GeneratorTrainer(bundle, load_domain(path), settings(), tmp_path / "out2")
    wide = [{"text": "good fine film", "options": [f"option {i}" for i in range(20)], "answer": 3}] * 4
    write_jsonl(tmp_path / "wide.jsonl", wide)
    entry = {"name": "wide", "data": "wide.jsonl", "dev_per_class": 1, **TASKS["options"]}
    (tmp_path / "wide.yaml").write_text(json.dumps({"domain": "toy", "tasks": [entry]}))
    message = (
        r"task 'wide': no training row fits the engine's limits "
        r"\(e.g. wide.jsonl row \d: 20 choices \(1 to 16"
    )
    with pytest.raises(ConfigError, match=message):
        GeneratorTrainer(bundle, load_domain(tmp_path / "wide.yaml"), settings(), tmp_path / "out3")
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "good", "options": ["a", "b"], "answer": 5}])
    bad = {"name": "bad", "data": "bad.jsonl", **TASKS["options"]}
    (tmp_path / "bad.yaml").write_text(json.dumps({"domain": "toy", "tasks": [bad]}))
    with pytest.raises(ConfigError, match=r"task 'bad': .*row 1: label index 5 is out of range"):
        load_domain(tmp_path / "bad.yaml")


def test_every_tensor_the_trainer_makes_is_on_the_models_device(tmp_path: Path) -> None:
    """The CPU run of the code a GPU runs: z, task vectors and labels follow ``bundle.device``."""
    bundle = tiny_bundle(0)
    domain = load_domain(write_domain(tmp_path, ["options", "full"]))
    trainer = GeneratorTrainer(bundle, domain, settings(steps=3, z_mode="task"), tmp_path / "out")
    assert trainer.device == bundle.device
    assert trainer.task_vectors.device == bundle.device and trainer._z(1).device == bundle.device
    assert all(p.device == bundle.device for p in trainer.parameters.values())
    trainer.run()
    assert trainer.state.step == 3 and float(trainer.task_vectors.detach().abs().sum()) > 0


def test_train_generator_loads_the_model_in_the_dtype_asked(tmp_path: Path, monkeypatch) -> None:
    """``--device cuda`` trains in fp32 unless ``--dtype`` says otherwise (the model loader is stubbed
    here to record what it was asked for and hand back the tiny model; no GPU is needed)."""
    asked: list[dict[str, object]] = []

    def load(spec: str, **options: object):
        asked.append(options)
        return tiny_bundle(0)

    monkeypatch.setattr("cbpt.server.model.load_model", load)
    domain = write_domain(tmp_path, ["full"])
    runner = CliRunner()

    def train(out: str, *extra: str):
        return runner.invoke(cli.app, ["train-generator", str(domain), "--out", str(tmp_path / out),
                                       "--steps", "2", "--dimension", "16", "--bottleneck", "8",
                                       "--prompt-length", "4", "--eval-every", "2", "--device", "cuda",
                                       *extra])  # fmt: skip

    result = train("fp32")
    assert result.exit_code == 0, result.output
    assert asked[-1]["device"] == "cuda" and asked[-1]["dtype"] is torch.float32
    assert (tmp_path / "fp32" / "generator.json").is_file()
    assert train("auto", "--dtype", "auto").exit_code == 0 and asked[-1]["dtype"] is None
    assert train("bf16", "--dtype", "bfloat16").exit_code == 0 and asked[-1]["dtype"] is torch.bfloat16
    result = train("bad", "--dtype", "fp8")
    assert result.exit_code == 2 and "--dtype 'fp8': expected one of float32" in result.output


def test_truncated_tasks_train_on_the_texts_a_users_client_sends(tmp_path: Path) -> None:
    """``truncate`` cuts texts on the client; training cuts them with the same code (``fit_examples``,
    counted by the engine's tokenizer), so a generator trains on exactly what it will be served."""
    from cbpt.common.tasks.fitting import fit_examples

    bundle = tiny_bundle(0)
    path = write_domain(tmp_path, ["fixed"], truncate={"field": "text", "side": "end", "max_tokens": 6})
    domain = load_domain(path)
    trainer = GeneratorTrainer(bundle, domain, settings(steps=2), tmp_path / "out")
    task, raw = trainer.domain.tasks[0], domain.tasks[0]
    assert task.truncated > 0 and task.train.texts != raw.train.texts
    assert max(len(bundle.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in task.train.texts) <= 6
    engine = ScoringEngine(
        bundle, ServedAdapters(specs=[AdapterSpec(method="none")], shipped_generators=False).build(bundle)
    )
    with serve_in_background(engine) as target, TuningClient(target) as client:
        for mine, split in ((task.train, raw.train), (task.dev, raw.dev)):
            assert fit_examples(client, split, raw.format.truncate, "split").examples.texts == mine.texts
    trainer.run()
    card = json.loads((tmp_path / "out" / "generator.json").read_text())
    assert card["training"]["tasks"][0]["truncated"] == task.truncated
