"""Optimizer registry, ask/tell, and resume by replay with digest checks (no pickle)."""

from __future__ import annotations

import numpy as np
import pytest

from cbpt.client.errors import CheckpointError, ConfigError
from cbpt.client.optimizers import (
    GenerationRecord,
    OptimizerConfig,
    candidates_digest,
    known_names,
    make_optimizer,
    register,
    replay,
)
from cbpt.common.registry import DuplicateName

CONFIG = OptimizerConfig(dimension=6, popsize=4, sigma0=1.0, seed=3, budget=40)
NAMES = ["cma", "ng:OnePlusOne", "ng:DiagonalCMA", "ng:NGOpt"]


def _sphere(candidates: np.ndarray) -> np.ndarray:
    return ((candidates - 0.5) ** 2).sum(axis=1)


def _run(
    name: str, generations: int, config: OptimizerConfig = CONFIG
) -> tuple[list[GenerationRecord], object]:
    optimizer = make_optimizer(name, config)
    records = []
    for _ in range(generations):
        population = optimizer.ask()
        losses = _sphere(population)
        optimizer.tell(population, losses)
        records.append(GenerationRecord(candidates_digest(population), tuple(losses.tolist())))
    return records, optimizer


def test_registry_refuses_a_duplicate_family() -> None:
    with pytest.raises(DuplicateName, match="optimizer family 'cma' is already registered"):
        register("cma", "cma")(lambda variant, config: None)


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known: cma, ng:<name>"):
        make_optimizer("adam", CONFIG)
    with pytest.raises(ConfigError, match="did you mean ng:OnePlusOne"):
        make_optimizer("ng:OnePlusOn", CONFIG)
    assert "cma" in known_names()


@pytest.mark.parametrize("name", NAMES)
def test_ask_tell_shapes_and_progress(name: str) -> None:
    records, optimizer = _run(name, 8)
    assert optimizer.ask().shape == (4, 6)
    first, last = np.mean(records[0].losses), min(min(r.losses) for r in records)
    assert last < first


@pytest.mark.parametrize("name", NAMES)
def test_replay_reproduces_the_run(name: str) -> None:
    records, optimizer = _run(name, 3)
    state = optimizer.state()
    following = optimizer.ask()
    rebuilt = make_optimizer(name, CONFIG)
    replay(rebuilt, records)
    assert rebuilt.state() == state
    np.testing.assert_array_equal(rebuilt.ask(), following)


def test_cma_offers_its_mean_as_candidate_zero_and_replays() -> None:
    config = OptimizerConfig(**{**CONFIG.__dict__, "include_recommendation": True})
    np.testing.assert_array_equal(make_optimizer("cma", config).ask()[0], np.zeros(6))  # the start point
    records, optimizer = _run("cma", 3, config)
    mean = optimizer._es.mean.copy()
    population = optimizer.ask()
    assert population.shape == (4, 6) and np.abs(mean).sum() > 0
    np.testing.assert_array_equal(population[0], mean)
    rebuilt = make_optimizer("cma", config)
    replay(rebuilt, records)
    np.testing.assert_array_equal(rebuilt.ask(), population)


def test_nevergrad_refuses_to_offer_a_recommendation() -> None:
    config = OptimizerConfig(**{**CONFIG.__dict__, "include_recommendation": True})
    with pytest.raises(ConfigError, match="needs the 'cma' optimizer"):
        make_optimizer("ng:NGOpt", config)


def test_replay_ignores_global_numpy_state() -> None:
    np.random.seed(1)
    records, _ = _run("cma", 2)
    np.random.seed(2)
    rebuilt = make_optimizer("cma", CONFIG)
    replay(rebuilt, records)  # would raise if sampling drew from the global generator


def test_replay_refuses_a_mismatched_digest() -> None:
    records, _ = _run("cma", 2)
    forged = [records[0], GenerationRecord("0" * 64, records[1].losses)]
    with pytest.raises(CheckpointError, match="generation 1"):
        replay(make_optimizer("cma", CONFIG), forged)
    other_seed = OptimizerConfig(**{**CONFIG.__dict__, "seed": 4})
    with pytest.raises(CheckpointError, match="generation 0"):
        replay(make_optimizer("cma", other_seed), records)


def test_tell_needs_the_asked_population() -> None:
    optimizer = make_optimizer("cma", CONFIG)
    population = optimizer.ask()
    with pytest.raises(ValueError, match="last ask"):
        optimizer.tell(population + 1.0, _sphere(population))
