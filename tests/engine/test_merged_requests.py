"""score_many: requests merged into shared forward passes score exactly as they do alone."""

from __future__ import annotations

import numpy as np
import pytest

from cbpt.server.adapters.cbp import CustomizedBlackBoxPrompt
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoreRequest, ScoringEngine, ScoringMode
from cbpt.server.errors import InvalidRequest, UnknownAdapter
from cbpt.server.testing import tiny_bundle, tiny_generator

TEXTS = [
    "Tweet: fine",
    "Tweet: a much longer tweet that needs padding in a batch",
    "Tweet: bad",
    "x",
    "ok then",
]
CUE = "\nSentiment:"


@pytest.fixture(scope="module")
def engine() -> ScoringEngine:
    bundle = tiny_bundle(3)
    adapters = ServedAdapters(bbt_dimension=8, prompt_length=3, shipped_generators=False).build(bundle)
    adapters.append(CustomizedBlackBoxPrompt(tiny_generator(bundle, dimension=8, prompt_length=3)))
    return ScoringEngine(bundle, adapters, batch_sequences=7)


def _requests(adapter: str, mode: ScoringMode = ScoringMode.FIRST_TOKEN) -> list[ScoreRequest]:
    rng = np.random.default_rng(len(adapter))
    dimension = 0 if adapter == "none" else 8
    return [
        ScoreRequest(adapter, rng.standard_normal((3, dimension)).astype(np.float32), TEXTS[:3],
                     [" yes", " no"], mode, CUE, scope="alice"),
        ScoreRequest(adapter, rng.standard_normal((1, dimension)).astype(np.float32), TEXTS[2:],
                     [[" a", " b", " c"], [" b"], [" c", " maybe not"]], mode, CUE, scope="bob"),
        ScoreRequest(adapter, rng.standard_normal((2, dimension)).astype(np.float32), TEXTS,
                     [" positive", " negative", " neutral"], mode, CUE, scope="alice"),
    ]  # fmt: skip


@pytest.mark.parametrize("adapter", ["none", "bbt", "bbt-suffix", "bbt-cue", "cbp"])
@pytest.mark.parametrize("mode", [ScoringMode.FIRST_TOKEN, ScoringMode.FULL_CHOICE])
def test_merged_scores_equal_unmerged(engine, adapter, mode):
    requests = _requests(adapter, mode)
    if mode is ScoringMode.FIRST_TOKEN:  # " maybe not" shares no first token with " c" only in full mode
        requests[1] = ScoreRequest(
            adapter, requests[1].candidates, TEXTS[2:], [" a", " b"], mode, CUE, scope="bob"
        )
    alone = [engine.score(request) for request in requests]
    merged = engine.score_many(requests)
    for single, together in zip(alone, merged, strict=True):
        assert not isinstance(together, Exception)
        assert together.log_probs.shape == single.log_probs.shape
        assert together.choice_counts == single.choice_counts
        np.testing.assert_allclose(together.log_probs, single.log_probs, atol=1e-4)


def test_a_bad_request_fails_alone_and_different_cues_are_grouped_apart(engine):
    good = _requests("bbt-suffix")
    other_cue = ScoreRequest("bbt-cue", good[0].candidates, TEXTS[:2], [" yes", " no"], cue="\nAnswer:")
    # Past the door only what the engine alone checks can fail: a token limit, an adapter it lacks.
    too_long = ScoreRequest("bbt", np.zeros((1, 8), np.float32), TEXTS[:1], [" yes", " no" * 40])
    unknown = ScoreRequest("nope", np.zeros((1, 8), np.float32), TEXTS[:1], [" yes", " no"])
    outcomes = engine.score_many([good[0], too_long, other_cue, unknown, good[2]])
    assert isinstance(outcomes[1], InvalidRequest) and outcomes[1].field == "shared_choices[1]"
    assert isinstance(outcomes[3], UnknownAdapter)
    for index, request in ((0, good[0]), (2, other_cue), (4, good[2])):
        np.testing.assert_allclose(outcomes[index].log_probs, engine.score(request).log_probs, atol=1e-4)


def _on_cue_engine() -> ScoringEngine:
    """BBT on the cue and a CBP generator on the cue (another dimension, a non-zero L_U)."""
    import dataclasses

    import torch

    from cbpt.server.adapters.generator import PromptGenerator

    bundle = tiny_bundle(3)
    bbt_cue = next(
        a
        for a in ServedAdapters(bbt_dimension=8, prompt_length=3, shipped_generators=False).build(bundle)
        if a.name == "bbt-cue"
    )
    config = dataclasses.replace(
        tiny_generator(bundle, dimension=12, prompt_length=3).config, placement="on_cue"
    )
    torch.manual_seed(5)
    generator = PromptGenerator(config)
    torch.nn.init.normal_(generator.up.weight, std=0.5)  # a prompt that moves the scores
    return ScoringEngine(
        bundle, [bbt_cue, CustomizedBlackBoxPrompt(generator, name="cbp-cue")], batch_sequences=64
    )


def _passes(engine: ScoringEngine, requests: list[ScoreRequest]) -> int:
    job = engine.job(requests)
    while job.step():
        pass
    return job.steps_done


def test_tenants_on_different_adapters_with_one_placement_share_a_forward_pass():
    engine = _on_cue_engine()
    rng = np.random.default_rng(0)
    requests = [
        ScoreRequest("bbt-cue", rng.standard_normal((3, 8)).astype(np.float32), TEXTS[:3], [" yes", " no"],
                     cue=CUE, scope="alice"),
        ScoreRequest("cbp-cue", rng.standard_normal((2, 12)).astype(np.float32), TEXTS[:3], [" yes", " no"],
                     cue=CUE, scope="bob"),
    ]  # fmt: skip
    alone = [engine.score(request) for request in requests]  # also warms each scope's text states
    assert not np.allclose(alone[0].log_probs[:2], alone[1].log_probs)  # the adapters differ
    merged = engine.score_many(requests)
    for single, together in zip(alone, merged, strict=True):
        assert not isinstance(together, Exception)
        np.testing.assert_allclose(together.log_probs, single.log_probs, atol=1e-4)
    separate = sum(_passes(engine, [request]) for request in requests)
    assert _passes(engine, requests) < separate  # one chunk for both tenants, not one each
