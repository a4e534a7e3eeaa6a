"""Training a domain prompt generator: the engine's own forward, with gradients on, the LLM frozen.

Each step takes one task of the domain and ``batch_size`` of its examples, scores them with
``z_samples`` vectors z through ``ScoringEngine.log_probs`` (the path ``Evaluate`` serves, so
training and serving cannot drift), and takes an AdamW step on L_D, L_U and z0 (and the per-task
vectors in ``z_mode="task"``) against the cross-entropy of the labels. With the prompt after
the text, the text's keys and values do not depend on the generator: they are computed once per
step without a graph, shared by every z, and only the prompt and cue positions are backpropagated.

Every ``eval_every`` steps each task's dev split is scored at z = 0 (where a user's search
starts); the generator with the best mean dev accuracy is the one written out. Every
``checkpoint_every`` steps the run is saved (state.py), so the same command resumes it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cbpt.common.files import write_atomic
from cbpt.common.limits import Limits
from cbpt.common.losses import accuracy, macro_f1, predictions
from cbpt.common.version import __version__
from cbpt.server.adapters.cbp import CustomizedBlackBoxPrompt
from cbpt.server.adapters.generator import GeneratorConfig, PromptGenerator
from cbpt.server.adapters.placement import Placement
from cbpt.server.engine.kv import TextStateCache
from cbpt.server.engine.scoring import ScoringEngine
from cbpt.server.errors import ConfigError
from cbpt.server.model import ModelBundle
from cbpt.server.training import shapes
from cbpt.server.training.domain import Domain, TrainingTask, load_domain
from cbpt.server.training.report import plot_curve
from cbpt.server.training.settings import TrainSettings
from cbpt.server.training.state import TrainingState, load_state, save_state

HISTORY_FILE = "history.jsonl"
CURVE_FILE = "curve.png"


@dataclass(frozen=True)
class StepReport:
    """What the progress bar shows after each step."""

    step: int
    steps: int
    loss: float
    examples_per_second: float
    dev_accuracy: float | None  # mean over tasks at the last evaluation


@dataclass(frozen=True)
class TrainingResult:
    folder: Path
    steps: int
    best_step: int | None
    best_dev_accuracy: float | None
    examples_seen: int
    train_seconds: float
    finished: bool  # False when max_minutes stopped it: the same command continues


class GeneratorTrainer:
    """One training run of one domain on one frozen model, writing into ``out``."""

    def __init__(
        self,
        bundle: ModelBundle,
        domain: Domain,
        settings: TrainSettings,
        out: Path,
        command: Sequence[str] = (),
    ) -> None:
        self.bundle, self.domain, self.settings, self.out = bundle, domain, settings, Path(out)
        self.command = list(command)
        if settings.placement is Placement.ON_CUE and (
            empty := [t.name for t in domain.tasks if not t.train.cue]
        ):
            raise ConfigError(
                f"placement on_cue needs an answer cue after the text; task {empty[0]!r} has none"
            )
        self.name = f"cbp-{domain.name}"
        self.generator = self._new_generator()
        self.adapter = CustomizedBlackBoxPrompt(self.generator, name=self.name)
        self.generator.requires_grad_(True)
        widest = max(max(len(t.dev), settings.batch_size) for t in domain.tasks)
        limits = Limits(
            max_candidates=max(64, settings.z_samples), max_examples=widest, max_sequences=1 << 30
        )
        # No text state outlives its step: a cached state was computed in another step's batch, and
        # batch shape changes its low bits on some CPUs, so a resumed run (which starts with an empty
        # cache) would drift from an uninterrupted one. Within a step every z sample still shares it.
        self.engine = ScoringEngine(bundle, [self.adapter], limits, text_states=TextStateCache(0, 1, 0))
        # Rows the engine would refuse are left out (and counted) now, not met hours in.
        self.domain = domain = shapes.fit_domain(domain, self.engine)
        self.device = bundle.device  # every tensor the trainer makes goes there
        self.task_vectors = torch.nn.Parameter(
            torch.zeros(len(domain.tasks), settings.dimension, device=self.device)
        )
        self.parameters: dict[str, torch.nn.Parameter] = {
            **{f"generator.{name}": p for name, p in self.generator.named_parameters()},
            **({"task_vectors": self.task_vectors} if settings.z_mode == "task" else {}),
        }
        self.optimizer = torch.optim.AdamW(
            list(self.parameters.values()), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        self.noise = torch.Generator().manual_seed(settings.seed)
        self.rng = np.random.default_rng(settings.seed)
        self.state = TrainingState()

    # -- set-up ------------------------------------------------------------------------------------
    def _new_generator(self) -> PromptGenerator:
        settings, bundle = self.settings, self.bundle
        config = GeneratorConfig(
            base_model_fingerprint=bundle.fingerprint,
            hidden_size=bundle.hidden_size,
            embedding_std=bundle.embedding_std,
            bottleneck=settings.bottleneck,
            prompt_length=settings.prompt_length,
            dimension=settings.dimension,
            projection_seed=settings.projection_seed,
            domain=self.domain.name,
            description=self.domain.description or f"CBP-Tuning prompt generator for {self.domain.name}",
            placement=settings.placement.value,
        )
        torch.manual_seed(settings.seed)
        generator = PromptGenerator(config).to(bundle.device)
        if settings.placement is Placement.ON_CUE:
            return generator.start_at(None)  # zero added onto the cue: exactly zero-shot
        return generator.start_at(self._init_prompt())

    def _init_prompt(self) -> torch.Tensor:
        """Embeddings of ``init_prompt``'s tokens, repeated to ``prompt_length`` rows."""
        ids = self.bundle.tokenizer(self.settings.init_prompt, add_special_tokens=False)["input_ids"] or [0]
        ids = (ids * self.settings.prompt_length)[: self.settings.prompt_length]
        embed = self.bundle.model.get_input_embeddings()
        return embed(torch.tensor(ids, device=self.bundle.device)).detach().float()

    def identity(self) -> dict[str, Any]:
        """What a resume must match: settings, domain file and data, model."""
        return {
            "settings": self.settings.model_dump(mode="json", exclude={"max_minutes", "checkpoint_every"}),
            "domain_sha256": self.domain.source_sha256,
            "data_sha256": [task.data_sha256 for task in self.domain.tasks],
            "model_fingerprint": self.bundle.fingerprint,
        }

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, on_step: Callable[[StepReport], None] | None = None) -> TrainingResult:
        restored = load_state(self.out, self.parameters, self.optimizer, self.identity())
        if restored is not None:
            self.state, torch_rng = restored
            self.noise.set_state(torch_rng)
            self.rng.bit_generator.state = self.state.numpy_rng
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            self._evaluate()  # step 0: the untrained generator, i.e. zero-shot on on-cue placement
        started = time.perf_counter()
        budget = None if self.settings.max_minutes is None else self.settings.max_minutes * 60
        stopped_by_time = False
        while self.state.step < self.settings.steps:
            if budget is not None and time.perf_counter() - started > budget:
                stopped_by_time = True
                break
            report = self._step()
            step = self.state.step
            if step % self.settings.eval_every == 0 or step == self.settings.steps:
                self._evaluate()
                report = StepReport(
                    step, self.settings.steps, report.loss, report.examples_per_second, self._last_dev()
                )
            if step % self.settings.checkpoint_every == 0 or step == self.settings.steps:
                self._checkpoint()
            if on_step is not None:
                on_step(report)
        if stopped_by_time and self._last_dev_step() != self.state.step:
            self._evaluate()  # a run cut short keeps its last step when that is its best so far
        self._checkpoint()
        finished = self.state.step >= self.settings.steps
        return TrainingResult(
            self.out,
            self.state.step,
            self.state.best_step,
            self.state.best_dev,
            self.state.examples_seen,
            self.state.train_seconds,
            finished,
        )

    def _step(self) -> StepReport:
        settings, state = self.settings, self.state
        began = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(state.step)
        index = int(self.rng.choice(len(self.domain.tasks), p=self._weights()))
        task = self.domain.tasks[index]
        examples = task.train.take(self._next_batch(task))
        z = self._z(index)
        zeros = np.zeros((len(z), settings.dimension), np.float32)
        prepared = self.engine.prepare(shapes.request(self.name, task, examples, zeros, "train"))
        log_probs, _ = self.engine.log_probs([prepared], z)[0]  # [z samples, batch, choices], -inf pads
        assert examples.labels is not None
        loss = shapes.label_loss(log_probs, examples.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        seconds = time.perf_counter() - began
        state.step += 1
        state.examples_seen += len(examples)
        state.train_seconds += seconds
        row = {"step": state.step, "task": task.name, "loss": float(loss.detach()),
               "lr": self.learning_rate(state.step - 1), "seconds": round(seconds, 4)}  # fmt: skip
        state.history.append(row)
        rate = state.examples_seen / state.train_seconds if state.train_seconds else 0.0
        return StepReport(state.step, settings.steps, row["loss"], rate, self._last_dev())

    def learning_rate(self, step: int) -> float:
        settings = self.settings
        peak, warmup = settings.learning_rate, settings.warmup_steps
        if step < warmup:
            return peak * (step + 1) / warmup
        progress = (step - warmup) / max(1, settings.steps - warmup)
        if settings.schedule == "cosine":
            return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if settings.schedule == "linear":
            return peak * max(0.0, 1 - progress)
        return peak

    def _weights(self) -> np.ndarray:
        weights = np.array([task.weight for task in self.domain.tasks], dtype=np.float64)
        return weights / weights.sum()

    def _next_batch(self, task: TrainingTask) -> list[int]:
        """The next ``batch_size`` examples of the task's shuffled order (reshuffled, seeded, each epoch)."""
        state, size = self.state, len(task.train)
        batch: list[int] = []
        while len(batch) < min(self.settings.batch_size, size):
            epoch = state.epochs.get(task.name, 0)
            order = np.random.default_rng([self.settings.seed, epoch, len(task.name)]).permutation(size)
            position = state.positions.get(task.name, 0)
            take = order[position : position + self.settings.batch_size - len(batch)].tolist()
            batch += take
            position += len(take)
            if position >= size:
                state.epochs[task.name], position = epoch + 1, 0
            state.positions[task.name] = position
        return batch

    def _z(self, task: int) -> torch.Tensor:
        settings = self.settings
        if settings.z_mode == "zero":
            return torch.zeros(1, settings.dimension, device=self.device)
        # Drawn on the CPU generator (the same draws on every device, and resumable), then moved.
        noise = torch.randn(settings.z_samples, settings.dimension, generator=self.noise) * settings.z_sigma
        noise = noise.to(self.device)
        if settings.z_mode == "task":
            return self.task_vectors[task][None, :] + noise
        return noise

    # -- evaluation, checkpoints, the output -------------------------------------------------------
    @torch.inference_mode()
    def dev_metrics(self) -> dict[str, dict[str, float]]:
        """Each task's dev accuracy and macro-F1 at z = 0 (the served generator as a user first meets it)."""
        results = {}
        zero = np.zeros((1, self.settings.dimension), np.float32)
        for task in self.domain.tasks:
            if not len(task.dev):
                continue
            dev = task.dev
            scored = self.engine.score(shapes.request(self.name, task, dev, zero, "dev"))
            predicted = predictions(scored.log_probs[0])  # macro-F1 below: over option positions per row
            assert dev.labels is not None
            results[task.name] = {
                "accuracy": accuracy(predicted, dev.labels),
                "macro_f1": macro_f1(predicted, dev.labels, scored.log_probs.shape[-1]),
            }
        return results

    def _evaluate(self) -> None:
        state = self.state
        metrics = self.dev_metrics()
        if not metrics:
            return
        mean = float(np.mean([m["accuracy"] for m in metrics.values()]))
        state.history.append({"step": state.step, "dev": metrics, "dev_mean_accuracy": mean})
        if state.best_dev is None or mean > state.best_dev:
            state.best_dev, state.best_step = mean, state.step
            self.generator.save(self.out, training=self._record(metrics))

    def _last_dev_step(self) -> int | None:
        return next((int(row["step"]) for row in reversed(self.state.history) if "dev" in row), None)

    def _last_dev(self) -> float | None:
        for row in reversed(self.state.history):
            if "dev_mean_accuracy" in row:
                return float(row["dev_mean_accuracy"])
        return None

    def _record(self, best_metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
        state = self.state
        first = next((row["dev"] for row in state.history if "dev" in row), None)
        return {
            "domain": self.domain.name,
            "tasks": [task.record() for task in self.domain.tasks],
            "settings": self.settings.model_dump(mode="json"),
            "z0": {"mode": self.settings.z_mode, "sigma": self.settings.z_sigma, "learned": True},
            "step": state.step,
            "examples_seen": state.examples_seen,
            "train_seconds": round(state.train_seconds, 1),
            "examples_per_second": round(state.examples_seen / state.train_seconds, 2)
            if state.train_seconds
            else None,
            "dev_at_zero_shot": first,
            "dev": best_metrics,
            "command": self.command,
            "torch": torch.__version__,
            "cbp_tuning": __version__,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _checkpoint(self) -> None:
        self.state.numpy_rng = self.rng.bit_generator.state
        save_state(
            self.out, self.state, self.parameters, self.optimizer, self.noise.get_state(), self.identity()
        )
        lines = "".join(json.dumps(row) + "\n" for row in self.state.history)
        write_atomic(self.out / HISTORY_FILE, lines, mode=0o644)
        plot_curve(self.out / CURVE_FILE, self.state.history)


def train_generator(
    bundle: ModelBundle,
    domain_file: Path,
    out: Path,
    settings: TrainSettings,
    *,
    command: Sequence[str] = (),
    on_step: Callable[[StepReport], None] | None = None,
) -> TrainingResult:
    """Train (or continue training) the domain file's generator into ``out``."""
    domain = load_domain(domain_file, seed=settings.seed)
    return GeneratorTrainer(bundle, domain, settings, out, command).run(on_step)
