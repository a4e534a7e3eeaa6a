"""The fairness bound with merged small calls beside a large one ("Tenants" #22, finding 0).

The scenario docs/operations.md states the bound for: one key's call of 20 candidates x 64 texts
on the prefix ``bbt`` adapter, and, while it runs, 100 one-candidate two-text calls on
``bbt-suffix`` from 20 other keys. Before, the 64 admitted small calls were merged into one job
whose text encoding took one pass per call (64 turns, each also costing a step of the large call),
so they all ended with the large call. Turns are counted on the engine thread, never timed; the
steps have unequal costs (the large call's chunks attend over far more positions).
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoreRequest, ScoreResult, ScoringEngine
from cbpt.server.errors import ServerBusy
from cbpt.server.scheduling.merging import MergeSettings
from cbpt.server.scheduling.scheduler import Scheduler
from cbpt.server.testing import tiny_bundle

CHOICES = [" positive", " negative"]
LONG = [f"Headline {i}: the company reported that operating profit rose to EUR {i}.{i} mn" for i in range(64)]


class TurnCounter:
    """The engine behind the scheduler, counting the steps it runs; the large job's second step waits
    at a gate until the test has queued the small calls."""

    def __init__(self, engine: ScoringEngine) -> None:
        self.engine = engine
        self.turns = 0
        self.jobs: list[CountedJob] = []
        self.gate_reached = threading.Event()
        self.gate_open = threading.Event()

    def job(self, requests: Sequence[ScoreRequest]) -> CountedJob:
        counted = CountedJob(self, self.engine.job(requests), len(requests))
        self.jobs.append(counted)
        return counted


class CountedJob:
    def __init__(self, counter: TurnCounter, job: Any, size: int) -> None:
        self._counter = counter
        self._job = job
        self.size = size
        self.first_turn: int | None = None
        self.finished_turn: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._job, name)

    def step(self) -> bool:
        counter = self._counter
        if counter.jobs[0] is self and self._job.steps_done == 1 and not counter.gate_open.is_set():
            counter.gate_reached.set()
            assert counter.gate_open.wait(30), "the test never opened the gate"
        more = self._job.step()
        if more:
            counter.turns += 1
            self.first_turn = counter.turns if self.first_turn is None else self.first_turn
        else:
            self.finished_turn = counter.turns
        return more


def z(candidates: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(candidates, 16)).astype(np.float32)


async def scenario(counter: TurnCounter) -> tuple[list[object], ScoreResult]:
    scheduler = Scheduler(counter, ThreadPoolExecutor(1), MergeSettings(merge_window_ms=0))
    big = asyncio.ensure_future(
        scheduler.score(
            ScoreRequest("bbt", z(20, 0), LONG, CHOICES, cue="\nSentiment:", scope="whale"), "whale"
        )
    )
    while not counter.gate_reached.is_set():
        await asyncio.sleep(0.005)
    small = [
        asyncio.ensure_future(
            scheduler.score(
                ScoreRequest(
                    "bbt-suffix", z(1, i), [f"Note {i}: sales grew", f"Note {i}: margins fell"], CHOICES,
                    cue="\nSentiment:", scope=f"key{i % 20}",
                ),
                f"key{i % 20}",
            )
        )
        for i in range(100)
    ]  # fmt: skip
    while scheduler.waiting + sum(task.done() for task in small) < 100:
        await asyncio.sleep(0.005)
    counter.gate_open.set()
    results = await asyncio.gather(*small, return_exceptions=True)
    return results, await big


def test_merged_small_calls_finish_within_the_bound_while_a_large_call_runs() -> None:
    bundle = tiny_bundle(0)
    # Passes of 64 rows, as the scenario counts them (the default bounds tokens, not rows: more, smaller
    # steps).
    engine = ScoringEngine(
        bundle,
        ServedAdapters(bbt_dimension=16, prompt_length=4, shipped_generators=False).build(bundle),
        batch_sequences=64,
        batch_tokens=8192,
    )
    counter = TurnCounter(engine)
    results, big = asyncio.run(scenario(counter))
    refused = [r for r in results if isinstance(r, ServerBusy)]
    assert len(refused) == 36  # beyond the 64 queued calls, refused at once
    whale, merged = counter.jobs
    assert merged.size == 64
    # The documented bound: a job of 128 texts and 128 rows takes ceil(128/64) encoding steps and
    # ceil(128/64) chunk steps; with k = 2 jobs taking turns it ends within k * s turns of being
    # admitted (one more: the large job's step in flight when it was).
    steps = math.ceil(128 / 64) + math.ceil(128 / 64)
    assert merged.steps_done <= steps, merged.steps_done
    assert merged.finished_turn is not None and merged.first_turn is not None
    assert merged.finished_turn - (merged.first_turn - 1) <= 2 * steps + 1, (
        merged.first_turn,
        merged.finished_turn,
    )
    assert whale.finished_turn is not None and whale.finished_turn > merged.finished_turn
    assert whale.steps_done == 1 + math.ceil(20 * 64 / 64)  # its prefixes, then its chunks
    assert big.log_probs.shape == (20, 64, 2)
