"""Tuner: the ask -> evaluate -> loss -> tell loop, with dev selection, early stopping and checkpoints.

Each generation's whole population goes to the server in one ``evaluate`` call
(the SDK splits it to the server's limits). Losses are computed here, from the
labels the task keeps, and only the optimizer sees them. Like BBT, the final
vector is the one with the best dev accuracy (ties: lower train loss), because
the loss on a few dozen training examples is a poor guide to held-out accuracy;
``select_on="loss"`` uses the dev cross-entropy instead, which is less coarse
than the accuracy of a dev set of a few dozen examples. Each generation offers one
candidate to that selection: by default its lowest train loss (``select_from="best"``),
which on a few dozen examples is partly noise; ``select_from="mean"`` offers the
optimizer's own estimate instead (CMA-ES: its mean, an average of the best samples),
which the optimizer injects as one of the ``popsize`` samples, so it costs no extra call.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbpt.client.errors import CheckpointError, ClientError, ConfigError
from cbpt.client.files.crypto import KeySpec, SecretKey, resolve_key
from cbpt.client.optimizers import (
    GenerationRecord,
    Optimizer,
    OptimizerConfig,
    candidates_digest,
    make_optimizer,
    replay,
)
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.checkpoint import Checkpoint, check_config, load_checkpoint, save_checkpoint
from cbpt.client.tuning.results import Candidate, HistoryRow, TuningResult
from cbpt.client.tuning.settings import TunerSettings
from cbpt.common.info import ServerInfo
from cbpt.common.losses import (
    accuracy,
    apply_bias,
    clip_losses,
    compute_losses,
    cross_entropy,
    metrics,
    predictions,
)
from cbpt.common.tasks.fitting import fit_examples
from cbpt.common.tasks.task import Examples, Task

# The checkpoint config's record of the budget the optimizer was built for (the first run's).
PLANNED_BUDGET = "optimizer_budget"


@dataclass
class _Progress:
    """Mutable run state; everything here is saved in, and restored from, the checkpoint."""

    generations: list[GenerationRecord] = field(default_factory=list)
    history: list[HistoryRow] = field(default_factory=list)
    best: Candidate | None = None
    calls_used: int = 0
    stale: int = 0  # dev evaluations since the dev selection score last improved
    stop_reason: str | None = None


class Tuner:
    """Tunes one adapter vector for a task against one server, as ``settings`` say.

    ``Tuner(client, task, settings=TunerSettings(...))``, or keyword overrides such as
    ``Tuner(client, task, adapter="bbt", budget=200)`` (applied on top of ``settings``).
    """

    def __init__(
        self,
        client: TuningClient,
        task: Task,
        *,
        settings: TunerSettings | None = None,
        checkpoint: Path | str | None = None,
        checkpoint_key: KeySpec = None,
        on_generation: Callable[[HistoryRow], None] | None = None,
        **overrides: Any,
    ) -> None:
        base = settings if settings is not None else TunerSettings()
        self.settings = base.replace(**overrides) if overrides else base
        self.client = client
        self.task = task
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self._checkpoint_key = checkpoint_key
        self._key: SecretKey | None = None
        self.on_generation = on_generation
        # The run in progress (or last run), so ``result_so_far`` can answer from ``on_generation``.
        self._info: ServerInfo | None = None
        self._progress: _Progress | None = None
        self._fitted: tuple[Examples, Examples] | None = None
        self.truncated = 0  # train and dev texts the pre-flight check shortened (task ``truncate``)

    @property
    def generations(self) -> int:
        return self.settings.generations

    def config(self, info: ServerInfo) -> dict[str, Any]:
        """What a resume must match exactly (``budget`` aside: it may grow): settings, task and model."""
        return {
            **self.settings.to_json(),
            "task": self.task.fingerprint(),
            "model_fingerprint": info.model_fingerprint,
        }

    def prepare(self) -> tuple[Examples, Examples]:
        """The pre-flight check: (train, dev) with every text known to fit the server.

        Texts are counted by the server and shortened as the task's ``truncate`` says, or the
        first that does not fit raises a TaskError with its row and length, before anything is
        scored. ``run`` calls it; call it first to fail before showing progress.
        """
        if self._fitted is None:
            train = fit_examples(self.client, self.task.train, self.task.truncate, "data.train")
            dev = fit_examples(self.client, self.task.dev, self.task.truncate, "data.train (dev split)")
            self._fitted, self.truncated = (train.examples, dev.examples), train.truncated + dev.truncated
        return self._fitted

    # -- the run ---------------------------------------------------------------------------------
    def run(self, *, resume: bool = False) -> TuningResult:
        """Tune until the budget, patience or the dev selection says stop.

        ``resume=True`` continues the checkpoint's run, also one that finished: with a larger
        ``budget`` it goes on from where it stopped. The optimizer is rebuilt with the budget it was
        first planned for, so the recorded generations replay exactly and the extension is
        deterministic.
        """
        info = self.client.info()
        self._info, self._progress = info, None
        settings = self.settings
        try:
            dimension = info.adapter(settings.adapter).dimension
        except KeyError as error:
            raise ConfigError(str(error.args[0])) from None
        train, dev = self.prepare()
        if dimension == 0:
            return self._run_without_vector(info, train, dev)
        config = self.config(info)
        if self.truncated:  # texts cut to this server's limit: a resume must cut them the same way
            config["fitted_texts"] = _texts_digest(train, dev)
        saved = self._load(config) if resume else None
        # The budget the optimizer plans for (nevergrad's choices depend on it) is the first run's.
        planned = _planned_budget(saved.config) if saved else self.generations * settings.popsize
        config[PLANNED_BUDGET] = planned
        optimizer = make_optimizer(
            settings.optimizer,
            OptimizerConfig(
                dimension,
                settings.popsize,
                settings.sigma0,
                settings.seed,
                planned,
                include_recommendation=settings.select_from == "mean",
            ),
        )
        progress = self._restore(optimizer, saved) if saved else self._fresh()
        self._progress = progress
        elapsed = progress.history[-1].elapsed_seconds if progress.history else 0.0
        while len(progress.generations) < self.generations and progress.stop_reason is None:
            row = self._generation(optimizer, train, dev, progress, elapsed)
            elapsed = row.elapsed_seconds
            if self.checkpoint is not None:
                save_checkpoint(self.checkpoint, self._to_checkpoint(config, optimizer, progress), self._key)
            if self.on_generation is not None:
                self.on_generation(row)
        return self._result(info, progress, progress.stop_reason or "budget")

    def result_so_far(self) -> TuningResult:
        """The best-on-dev selection so far: what ``run()`` would return if it stopped now.

        Meant for ``on_generation`` callbacks (e.g. to score the current choice on a test set
        at several budgets of one run). ``stop_reason`` is the run's own once it has one, and
        ``"running"`` while generations of the budget remain.
        """
        progress, info = self._progress, self._info
        if progress is None or info is None or progress.best is None:
            raise ClientError("no generation has finished yet; call result_so_far from on_generation")
        done = len(progress.generations) >= self.generations
        reason = progress.stop_reason or ("budget" if done else "running")
        return self._result(info, progress, reason)

    def _fresh(self) -> _Progress:
        if self.checkpoint is not None:
            if self.checkpoint.exists():
                raise CheckpointError(
                    f"a checkpoint already exists at {self.checkpoint}; resume it or choose another folder"
                )
            self._key = resolve_key(self._checkpoint_key)
        return _Progress()

    def _load(self, config: dict[str, Any]) -> Checkpoint:
        """The checkpoint to continue, if it was written for these settings (any budget it can reach)."""
        if self.checkpoint is None:
            raise CheckpointError("resume needs a checkpoint path")
        self._key = resolve_key(self._checkpoint_key)
        saved = load_checkpoint(self.checkpoint, self._key)
        check_config(saved.config, config, self.checkpoint, ignore=("budget", PLANNED_BUDGET))
        if self.generations < len(saved.generations):
            done = len(saved.generations) * self.settings.popsize
            raise CheckpointError(
                f"checkpoint {self.checkpoint} already used {done} calls; --budget must be at least {done}"
            )
        return saved

    def _restore(self, optimizer: Optimizer, saved: Checkpoint) -> _Progress:
        replay(optimizer, saved.generations)
        if _canonical(optimizer.state()) != _canonical(saved.optimizer_state):
            raise CheckpointError(
                f"checkpoint {self.checkpoint}: the replayed optimizer state differs from the saved one"
            )
        return _Progress(
            generations=list(saved.generations),
            history=[HistoryRow.from_json(row) for row in saved.history],
            best=saved.best,
            calls_used=saved.calls_used,
            stale=int(saved.progress.get("stale", 0)),
            stop_reason=saved.progress.get("stop_reason"),
        )

    def _generation(
        self, optimizer: Optimizer, train: Examples, dev: Examples, progress: _Progress, elapsed: float
    ) -> HistoryRow:
        """Ask, score, tell and select one generation; record it in ``progress`` and return its row."""
        started = time.perf_counter()
        settings = self.settings
        index = len(progress.generations)
        candidates = optimizer.ask()
        log_probs = self.client.evaluate(
            settings.adapter, candidates, train.texts, train.choices, self.task.mode, train.cue
        )
        labels = _labels(train)
        scored = compute_losses(settings.loss, log_probs, labels, with_bias=settings.fit_bias)
        losses = clip_losses(scored.losses, index)
        optimizer.tell(candidates, losses)
        progress.generations.append(GenerationRecord(candidates_digest(candidates), tuple(losses.tolist())))
        progress.calls_used += len(candidates)
        best = int(np.argmin(losses))
        offered = 0 if settings.select_from == "mean" else best  # the injected mean is candidate 0
        vector = candidates[offered].astype(np.float32)
        bias = None if scored.bias is None else scored.bias[offered].copy()
        last = index + 1 == self.generations
        on_dev = len(dev) > 0 and ((index + 1) % settings.dev_every == 0 or last)
        candidate = Candidate(
            generation=index,
            vector=vector,
            bias=bias,
            train_loss=float(losses[offered]),
            dev_metrics=self._dev_metrics(vector, bias, dev) if on_dev else None,
        )
        self._select(candidate, progress)
        wall = time.perf_counter() - started
        row = HistoryRow(
            generation=index,
            calls_used=progress.calls_used,
            best_loss=float(losses[best]),
            mean_loss=float(losses.mean()),
            train_accuracy=accuracy(predictions(scored.log_probs[offered]), labels),
            dev_accuracy=candidate.dev_accuracy,
            wall_seconds=wall,
            elapsed_seconds=elapsed + wall,
        )
        progress.history.append(row)
        return row

    def _dev_metrics(self, vector: np.ndarray, bias: np.ndarray | None, dev: Examples) -> dict[str, Any]:
        log_probs = self.client.predict(
            self.settings.adapter, vector, dev.texts, dev.choices, self.task.mode, dev.cue
        )
        labels = _labels(dev)
        adjusted = apply_bias(log_probs, bias)
        result = metrics(adjusted, labels, dev.num_choices)
        result["loss"] = float(cross_entropy(adjusted[None], labels)[0])
        return result

    def _dev_score(self, candidate: Candidate) -> float | None:
        """Higher is better: the dev accuracy, or minus the dev cross-entropy (``select_on``)."""
        dev = candidate.dev_metrics
        if dev is None:
            return None
        return float(dev["accuracy"]) if self.settings.select_on == "accuracy" else -float(dev["loss"])

    def _select(self, candidate: Candidate, progress: _Progress) -> None:
        """Keep the best candidate: by its dev score when a dev split exists, then by train loss."""
        best = progress.best
        score = self._dev_score(candidate)
        if score is None:
            if best is None or (best.dev_metrics is None and candidate.train_loss < best.train_loss):
                progress.best = candidate
            return
        best_score = None if best is None else self._dev_score(best)
        improved = best_score is None or score > best_score
        tie = best is not None and score == best_score and candidate.train_loss < best.train_loss
        if improved or tie:
            progress.best = candidate
        progress.stale = 0 if improved else progress.stale + 1
        patience = self.settings.patience
        if patience is not None and progress.stale >= patience:
            progress.stop_reason = "patience"

    def _to_checkpoint(self, config: dict[str, Any], optimizer: Optimizer, progress: _Progress) -> Checkpoint:
        return Checkpoint(
            config=config,
            generations=progress.generations,
            history=[row.to_json() for row in progress.history],
            best=progress.best,
            optimizer_state=optimizer.state(),
            calls_used=progress.calls_used,
            progress={"stale": progress.stale, "stop_reason": progress.stop_reason},
        )

    def _run_without_vector(self, info: ServerInfo, train: Examples, dev: Examples) -> TuningResult:
        """A dimension-0 adapter ("none") has nothing to tune: score once, fit the bias if asked."""
        started = time.perf_counter()
        settings = self.settings
        empty = np.zeros((1, 0), dtype=np.float32)
        log_probs = self.client.evaluate(
            settings.adapter, empty, train.texts, train.choices, self.task.mode, train.cue
        )
        labels = _labels(train)
        scored = compute_losses(settings.loss, log_probs, labels, with_bias=settings.fit_bias)
        bias = None if scored.bias is None else scored.bias[0].copy()
        candidate = Candidate(
            generation=None,
            vector=empty[0],
            bias=bias,
            train_loss=float(scored.losses[0]),
            dev_metrics=self._dev_metrics(empty[0], bias, dev) if len(dev) else None,
        )
        seconds = time.perf_counter() - started
        row = HistoryRow(
            generation=0,
            calls_used=1,
            best_loss=float(scored.losses[0]),
            mean_loss=float(scored.losses[0]),
            train_accuracy=accuracy(predictions(scored.log_probs[0]), labels),
            dev_accuracy=candidate.dev_accuracy,
            wall_seconds=seconds,
            elapsed_seconds=seconds,
        )
        progress = _Progress(history=[row], best=candidate, calls_used=1, stop_reason="no-vector")
        self._progress = progress
        if self.on_generation is not None:
            self.on_generation(row)
        return self._result(info, progress, "no-vector")

    def _result(self, info: ServerInfo, progress: _Progress, stop_reason: str) -> TuningResult:
        best = progress.best
        assert best is not None, "a run evaluates at least one generation"
        return TuningResult(
            vector=best.vector.copy(),
            bias=None if best.bias is None else best.bias.copy(),
            history=tuple(progress.history),
            dev_metrics=best.dev_metrics,
            train_loss=best.train_loss,
            calls_used=progress.calls_used,
            stop_reason=stop_reason,
            adapter=self.settings.adapter,
            optimizer=self.settings.optimizer,
            model_id=info.model_id,
            model_fingerprint=info.model_fingerprint,
            task=self.task.metadata(),
            settings=self.settings.to_json(),
        )


def _labels(examples: Examples) -> np.ndarray:
    """The labels of a split the task sampled (always labelled)."""
    assert examples.labels is not None, "tuning splits are labelled"
    return examples.labels


def _texts_digest(*splits: Examples) -> str:
    return hashlib.sha256(json.dumps([split.texts for split in splits]).encode("utf-8")).hexdigest()


def _planned_budget(config: dict[str, Any]) -> int:
    """The budget a checkpoint's optimizer was built with (checkpoints before extension: its budget)."""
    return int(config.get(PLANNED_BUDGET, config["budget"]))


def _canonical(value: Any) -> Any:
    """JSON round trip, so a live state compares equal to the same state read back from a checkpoint."""
    return json.loads(json.dumps(value, sort_keys=True))
