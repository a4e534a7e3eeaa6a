"""``cbpt tune --adapter auto`` against a real loopback server with two CBP generators, one trained on
the task's domain (clearly better at z = 0) and one untrained (zero-shot): it chooses, says why, counts
its calls in the budget, and sends no label."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cbpt.client.cli import app
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.auto import choose_generator
from cbpt.common.tasks.task import Task
from tests.client.helpers import write_task
from tests.client.test_privacy import RequestRecorder

testing = pytest.importorskip("cbpt.server.testing")
runner = CliRunner()
GOOD = ["good", "great", "fine", "lovely", "nice"]
BAD = ["bad", "awful", "dull", "poor", "slow"]


def _rows(count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        positive = rng.random() < 0.5
        words = [*rng.sample(GOOD if positive else BAD, 2), rng.choice(["film", "movie", "plot"])]
        rows.append({"text": " ".join(words), "label": "LABEL_SECRET_A" if positive else "LABEL_SECRET_B"})
    return rows


@pytest.fixture(scope="module")
def generators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with cbp-good (trained on the toy sentiment domain) and cbp-plain (untrained: zero-shot)."""
    from cbpt.server.adapters import AdapterSpec, build_adapters
    from cbpt.server.engine import ScoringEngine
    from cbpt.server.front.app import serve_in_background
    from cbpt.server.training.domain import load_domain
    from cbpt.server.training.trainer import GeneratorTrainer
    from tests.training.helpers import settings, write_domain

    folder = tmp_path_factory.mktemp("generators")
    bundle = testing.tiny_bundle(0)
    train = settings(steps=80, eval_every=40, batch_size=16, bottleneck=32, checkpoint_every=1000)
    for name, steps in (("good", 80), ("plain", 0)):
        (folder / name).mkdir()
        domain = load_domain(write_domain(folder / name, ["fixed"], domain=name))
        trainer = GeneratorTrainer(bundle, domain, train, folder / name / "out")
        if steps:
            trainer.run()
        else:
            trainer.generator.save(folder / name / "out")
    specs = [AdapterSpec(method="none")] + [
        AdapterSpec(method="cbp", generator=folder / name / "out") for name in ("plain", "good")
    ]
    with serve_in_background(ScoringEngine(bundle, build_adapters(bundle, specs))) as target:
        yield target


def _task(folder: Path, dev: int = 8) -> Path:
    return write_task(folder, rows=_rows(80, seed=7), shots=8, dev=dev)


def _tune_auto(server: str, task_path: Path, out: Path, budget: int, *options: str) -> Result:
    """``cbpt tune TASK --adapter auto --budget BUDGET --popsize 4`` against ``server``."""
    words = ["tune", str(task_path), "--server", server, "--out", str(out), "--adapter", "auto"]
    return runner.invoke(app, [*words, "--budget", str(budget), "--popsize", "4", *options])


def test_auto_chooses_the_better_generator_on_dev_and_counts_its_calls(
    generators: str, tmp_path: Path
) -> None:
    task_path = _task(tmp_path / "project")
    recorder = RequestRecorder()
    with TuningClient(generators, interceptors=[recorder]) as client:
        choice = choose_generator(client, Task.from_file(task_path))
    assert choice.chosen == "cbp-good" and [c.adapter for c in choice.candidates] == ["cbp-good", "cbp-plain"]
    good, plain = choice.candidates
    assert good.dev_accuracy >= plain.dev_accuracy + 0.2
    wire = b"".join(data for _, data in recorder.requests)
    assert b"LABEL_SECRET" not in wire and b"good" in wire  # texts go out, labels do not
    assert sum(method.endswith("/Evaluate") for method, _ in recorder.requests) == 2  # one call each

    result = _tune_auto(generators, task_path, tmp_path / "tuned", 14, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["adapter"] == "cbp-good" and summary["budget"] == 14
    assert summary["calls_used"] == 2 + 12  # the choice's 2 calls leave 12: three generations of 4
    assert summary["auto"]["chosen"] == "cbp-good"
    assert [c["adapter"] for c in summary["auto"]["candidates"]] == ["cbp-good", "cbp-plain"]
    assert set(summary["auto"]["candidates"][0]) == {"adapter", "dev_accuracy", "dev_macro_f1"}
    assert summary["auto"]["candidates"][0]["dev_accuracy"] == good.dev_accuracy

    said = _tune_auto(generators, task_path, tmp_path / "again", 6)
    assert said.exit_code == 0, said.output
    assert "--adapter auto chose cbp-good (best dev accuracy at z = 0" in said.output
    assert f"cbp-good {good.dev_accuracy:.4f}" in said.output and "cbp-plain" in said.output
    assert "chosen by --adapter auto" in said.output and "6 of 6" in said.output


def test_auto_without_a_dev_split_or_a_generator_is_a_clear_error(generators: str, tmp_path: Path) -> None:
    result = _tune_auto(generators, _task(tmp_path / "no-dev", dev=0), tmp_path / "a", 8)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "error: --adapter auto chooses on the dev split, and this task has none" in result.output
    short = _tune_auto(generators, _task(tmp_path / "b"), tmp_path / "b-out", 5)
    assert "--budget 5: --adapter auto spends 2 calls choosing, which leaves 3" in short.output
    from cbpt.server.front.app import serve_in_background

    with serve_in_background(testing.tiny_engine(with_cbp=False)) as plain_server:  # none and BBT only
        result = _tune_auto(plain_server, _task(tmp_path / "c"), tmp_path / "c-out", 8)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "serves no CBP generator (cbp-<domain>) to choose from; served: none, bbt" in result.output
