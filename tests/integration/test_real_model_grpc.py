"""The bundled model over a real loopback gRPC channel: same scores as in-process, and a real tuning run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.tuner import Tuner
from cbpt.common.tasks.task import Task
from cbpt.server.engine import ScoreRequest
from cbpt.server.front.app import serve_in_background

pytestmark = pytest.mark.integration

TEXTS = ["Review: an utterly delightful film.", "Review: a boring, painful mess.", "Review: it was fine."]
CHOICES = [" negative", " positive"]


@pytest.fixture(scope="module")
def target(real_engine):
    with serve_in_background(real_engine) as address:
        yield address


@pytest.mark.parametrize("adapter", ["none", "bbt", "bbt-suffix"])
def test_grpc_scores_equal_in_process_scores(real_engine, target, adapter):
    dimension = real_engine.adapters[adapter].dimension
    candidates = np.random.default_rng(0).standard_normal((3, dimension)).astype(np.float32)
    with TuningClient(target) as client:
        remote = client.evaluate(adapter, candidates, TEXTS, CHOICES, cue="\nSentiment:")
    local = real_engine.score(ScoreRequest(adapter, candidates, TEXTS, CHOICES, cue="\nSentiment:"))
    np.testing.assert_allclose(remote, local.log_probs, atol=1e-5)
    assert np.isfinite(remote).all()
    np.testing.assert_allclose(np.exp(remote).sum(-1), 1.0, atol=1e-5)


def test_real_tuning_run_on_a_small_budget(target, tmp_path):
    rows = [
        {"text": text, "label": label}
        for text, label in [
            ("a gorgeous, moving film", "positive"),
            ("I loved every minute of it", "positive"),
            ("a triumph of acting and writing", "positive"),
            ("warm, funny and smart", "positive"),
            ("dull and far too long", "negative"),
            ("a tedious, lifeless mess", "negative"),
            ("I wanted my money back", "negative"),
            ("clumsy, loud and boring", "negative"),
        ]
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    task = Task.from_dict(
        {
            "name": "mini-sst",
            "data": {"train": str(tmp_path / "train.jsonl")},
            "template": "Review: {text}\nSentiment:",
            "choices": {"negative": " negative", "positive": " positive"},
            "shots_per_class": 3,
            "dev_per_class": 1,
            "seed": 0,
        }
    )
    with TuningClient(target) as client:
        result = Tuner(client, task, adapter="bbt-suffix", budget=8, popsize=4, fit_bias=True, seed=0).run()
    assert result.calls_used == 8 and len(result.history) == 2
    assert result.vector.shape == (500,) and np.isfinite(result.vector).all()
    assert result.bias is not None and result.bias.shape == (2,)
    assert all(np.isfinite(row.best_loss) for row in result.history)


def test_a_generator_trained_for_gemma_is_not_served_on_smollm2(real_engine):
    """The shipped Gemma opinion generator is listed as not served on the bundled model, with why, and
    naming it explicitly is refused."""
    from cbpt.server.adapters import AdapterSpec, build_adapters
    from cbpt.server.adapters.served import SHIPPED_GENERATORS
    from cbpt.server.errors import ModelMismatch

    folder = SHIPPED_GENERATORS / "opinion-gemma3-270m"
    assert "hidden size 640" in dict(real_engine.info().not_served)[folder.name]
    assert "cbp-opinion" in real_engine.adapters  # SmolLM2's own opinion generator
    with pytest.raises(ModelMismatch, match=r"hidden size 640.*hidden size 576"):
        build_adapters(real_engine.bundle, [AdapterSpec(method="cbp", generator=folder)])
