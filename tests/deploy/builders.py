"""Builders for the Ray backend tests, free of Ray: a tiny model in a folder replicas load by path,
its generators, the recipe that serves them, and tasks to tune."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cbpt.common.tasks.task import Task
from cbpt.server.adapters.placement import Placement
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.adapters.spec import AdapterSpec
from cbpt.server.recipe import EngineRecipe, EngineSettings
from tests.client.helpers import write_task
from tests.server.helpers import DIMENSION

PROMPT_LENGTH = 4
DOMAINS = ("alpha", "beta")


def save_tiny_model(folder: Path) -> Path:
    """The tests' tiny Llama saved as a folder, and one random CBP generator per domain beside it."""
    import torch

    from cbpt.server.adapters.generator import GeneratorConfig, PromptGenerator
    from cbpt.server.model import load_model
    from cbpt.server.testing import tiny_bundle

    bundle = tiny_bundle()
    bundle.model.save_pretrained(folder / "model")
    bundle.tokenizer.save_pretrained(folder / "model")
    loaded = load_model(str(folder / "model"))  # the fingerprint replicas will see
    for seed, domain in enumerate(DOMAINS, start=1):
        config = GeneratorConfig(
            base_model_fingerprint=loaded.fingerprint,
            hidden_size=loaded.hidden_size,
            embedding_std=loaded.embedding_std,
            bottleneck=16,
            prompt_length=PROMPT_LENGTH,
            dimension=DIMENSION,
            projection_seed=seed,
            domain=domain,
            description=f"random generator for the {domain} tests",
        )
        torch.manual_seed(seed)
        PromptGenerator(config).save(folder / domain)
    return folder


def tiny_recipe(folder: Path) -> EngineRecipe:
    bbt = {"method": "bbt", "dimension": DIMENSION, "prompt_length": PROMPT_LENGTH}
    specs = [
        AdapterSpec(method="none"),
        AdapterSpec(name="bbt", **bbt),
        AdapterSpec(name="bbt-suffix", placement=Placement.BEFORE_CUE, **bbt),
        *(AdapterSpec(method="cbp", generator=folder / domain) for domain in DOMAINS),
    ]
    return EngineRecipe(
        engine=EngineSettings(model=str(folder / "model")),
        adapters=ServedAdapters(specs=specs, shipped_generators=False),
    )


def make_task(folder: Path, per_class: int = 8, shots: int = 4, dev: int = 2) -> Task:
    return Task.from_file(
        write_task(folder, task_name="scale-out", per_class=per_class, shots=shots, dev=dev)
    )


def wait_until(condition: Callable[[], Any], what: str, limit: float = 300.0) -> Any:
    """Poll until ``condition()`` is truthy (no assertion on how long it takes; ``limit`` only
    stops a broken test from hanging)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")
