"""``--adapter auto``: which served CBP generator to tune, chosen on the task's own dev split.

Each served generator (method ``cbp``) is scored once at z = 0 (its trained domain prompt, where a
search starts) on the dev split: one candidate evaluation each, counted in the run's budget. Only
texts, choices and z leave the client; the labels stay here, where the accuracy and macro-F1 are
computed. The best dev accuracy wins; ties go to the higher macro-F1, then to the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cbpt.client.errors import ConfigError
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.settings import TunerSettings
from cbpt.common.losses import metrics
from cbpt.common.tasks.fitting import fit_examples
from cbpt.common.tasks.task import Task

AUTO = "auto"
GENERATOR_METHOD = "cbp"


@dataclass(frozen=True)
class Candidate:
    adapter: str
    dev_accuracy: float
    dev_macro_f1: float

    def to_json(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "dev_accuracy": self.dev_accuracy, "dev_macro_f1": self.dev_macro_f1}


@dataclass(frozen=True)
class AutoChoice:
    """The generator chosen and every candidate's dev figures at z = 0, best first."""

    chosen: str
    candidates: tuple[Candidate, ...]

    @property
    def calls(self) -> int:
        """Candidate evaluations the choice spent: one per generator."""
        return len(self.candidates)

    def to_json(self) -> dict[str, Any]:
        """The ``auto`` key of ``cbpt tune --json``."""
        return {"chosen": self.chosen, "candidates": [candidate.to_json() for candidate in self.candidates]}

    def settings_for(self, settings: TunerSettings) -> TunerSettings:
        """The run's settings: the chosen generator, and the budget less the calls the choice spent."""
        left = settings.budget - self.calls
        if left < settings.popsize:
            raise ConfigError(
                f"--budget {settings.budget}: --adapter auto spends {self.calls} calls choosing, "
                f"which leaves {left}, less than one generation (--popsize {settings.popsize})"
            )
        return settings.replace(adapter=self.chosen, budget=left)

    def lines(self) -> list[str]:
        """What the CLI says: which generator, and why (every candidate's dev figures)."""
        figures = "; ".join(
            f"{c.adapter} {c.dev_accuracy:.4f} (macro-F1 {c.dev_macro_f1:.4f})" for c in self.candidates
        )
        why = "best dev accuracy at z = 0" + (
            ", then macro-F1, then name" if len(self.candidates) > 1 else ""
        )
        return [f"--adapter auto chose {self.chosen} ({why}; {self.calls} calls of the budget)",
                f"dev accuracy at z = 0: {figures}"]  # fmt: skip


def choose_generator(client: TuningClient, task: Task) -> AutoChoice:
    """Score every served CBP generator at z = 0 on ``task``'s dev split and rank them."""
    generators = [adapter for adapter in client.info().adapters if adapter.method == GENERATOR_METHOD]
    if not generators:
        served = ", ".join(adapter.name for adapter in client.info().adapters) or "none"
        raise ConfigError(
            f"--adapter auto: {client.target} serves no CBP generator (cbp-<domain>) to choose from; "
            f"served: {served}"
        )
    if not len(task.dev):
        raise ConfigError(
            "--adapter auto chooses on the dev split, and this task has none (dev_per_class is 0); "
            "set dev_per_class, or name the adapter with --adapter"
        )
    dev = fit_examples(client, task.dev, task.truncate, "data.train (dev split)").examples
    assert dev.labels is not None, "tuning splits are labelled"
    scored = []
    for adapter in generators:
        zero = np.zeros(adapter.dimension, dtype=np.float32)
        log_probs = client.predict(adapter.name, zero, dev.texts, dev.choices, task.mode, dev.cue)
        figures = metrics(log_probs, dev.labels, dev.num_choices)
        scored.append(Candidate(adapter.name, float(figures["accuracy"]), float(figures["macro_f1"])))
    ranked = tuple(sorted(scored, key=lambda c: (-c.dev_accuracy, -c.dev_macro_f1, c.adapter)))
    return AutoChoice(ranked[0].adapter, ranked)
