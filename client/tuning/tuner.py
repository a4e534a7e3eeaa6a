"""Tuner: pycma's loop against the server, ``while not stop(): ask(); evaluate(); tell()``.

Each generation's whole population goes to the server in one ``evaluate`` call (the SDK splits
it to the server's limits). Losses are computed here, from the labels the task keeps, and only
the optimizer sees them. ``tell`` offers one candidate per generation to the dev selection
(``state.py``): by default its lowest train loss (``select_from="best"``), which on a few dozen
examples is partly noise; ``select_from="mean"`` offers the optimizer's own estimate instead
(CMA-ES: its mean, an average of the best samples), which the optimizer injects as one of the
``popsize`` samples, so it costs no extra call.

The rest is managing output, done by tell callbacks (``callbacks.py``): the history, patience and
the checkpoint, then whatever a caller registers with ``register_callback``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
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
)
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.callbacks import (
    EVENTS,
    CheckpointWriter,
    Event,
    Patience,
    TellCallback,
    record_history,
)
from cbpt.client.tuning.checkpoint import PLANNED_BUDGET, Checkpoint, planned_budget, resumable
from cbpt.client.tuning.results import Candidate, HistoryRow, StopReason, TuningResult
from cbpt.client.tuning.settings import TunerSettings
from cbpt.client.tuning.state import TuningState
from cbpt.common.info import ServerInfo
from cbpt.common.losses import (
    LossResult,
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


@dataclass
class _Search:
    """The run in progress, besides its state: what ``ask``, ``evaluate`` and ``tell`` work on."""

    optimizer: Optimizer
    train: Examples
    dev: Examples
    callbacks: tuple[TellCallback, ...]  # the tuner's own (history, patience, checkpoint), then registered
    asked_at: float = 0.0  # when this generation's ``ask`` ran (its row's wall time starts there)


class Tuner:
    """Tunes one adapter vector for a task against one server, as ``settings`` say.

    ``Tuner(client, task, settings=TunerSettings(...))``, or keyword overrides such as
    ``Tuner(client, task, adapter="bbt", budget=200)`` (applied on top of ``settings``).
    ``register_callback("tell", callback)`` has ``callback(tuner, row)`` called after every generation.
    """

    def __init__(
        self,
        client: TuningClient,
        task: Task,
        *,
        settings: TunerSettings | None = None,
        checkpoint: Path | str | None = None,
        checkpoint_key: KeySpec = None,
        **overrides: Any,
    ) -> None:
        base = settings if settings is not None else TunerSettings()
        self.settings = base.replace(**overrides) if overrides else base
        self.client = client
        self.task = task
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self._checkpoint_key = checkpoint_key
        self._key: SecretKey | None = None
        self._callbacks: list[TellCallback] = []
        # The run in progress (or last run), so callbacks and ``result_so_far`` can read it.
        self._info: ServerInfo | None = None
        self._state: TuningState | None = None
        self._search: _Search | None = None
        self._fitted: tuple[Examples, Examples] | None = None
        self.truncated = 0  # train and dev texts the pre-flight check shortened (task ``truncate``)

    @property
    def generations(self) -> int:
        return self.settings.generations

    @property
    def state(self) -> TuningState:
        """The run so far (or the last run's): what callbacks read, and what checkpoints hold."""
        if self._state is None:
            raise ClientError("no run has started; the tuner's state exists from run() on")
        return self._state

    def register_callback(self, event: Event, callback: TellCallback) -> None:
        """Call ``callback(tuner, row)`` after every ``tell`` of the runs to come (nevergrad's idiom),
        after the tuner's own history, patience and checkpoint callbacks, in the order registered."""
        if event not in EVENTS:
            raise ConfigError(f"unknown callback event {event!r}; known: {', '.join(EVENTS)}")
        self._callbacks.append(callback)

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
        """Tune until the budget or patience says stop.

        ``resume=True`` continues the checkpoint's run, also one that finished: with a larger
        ``budget`` it goes on from where it stopped. The optimizer is rebuilt with the budget it was
        first planned for, so the recorded generations replay exactly and the extension is
        deterministic.
        """
        info = self.client.info()
        self._info, self._state, self._search = info, None, None
        try:
            dimension = info.adapter(self.settings.adapter).dimension
        except KeyError as error:
            raise ConfigError(str(error.args[0])) from None
        train, dev = self.prepare()
        if dimension == 0:
            return self._run_without_vector(train, dev)
        self._start(info, dimension, train, dev, resume=resume)
        while not self.stop():
            candidates = self.ask()
            losses = self.evaluate(candidates)
            self.tell(candidates, losses)
        return self.result_so_far()

    def stop(self) -> StopReason | None:
        """Why the run stops now, or None while it goes on (pycma's ``es.stop()``): the reason a stop
        rule recorded (patience; a dimension-0 adapter), else the budget once its generations ran."""
        state = self.state
        if state.stop_reason is not None:
            return state.stop_reason
        return StopReason.BUDGET if len(state.generations) >= self.generations else None

    def ask(self) -> np.ndarray:
        """The next population, float64 [popsize, dimension]."""
        search = self._current()
        search.asked_at = time.perf_counter()
        return search.optimizer.ask()

    def evaluate(self, candidates: np.ndarray) -> LossResult:
        """Each candidate's train loss (and bias, with ``fit_bias``), from the server's log-probs and the
        labels that stay here; non-finite losses are clipped so every optimizer can rank them."""
        scores = self._train_scores(candidates, self._current().train)
        return dataclasses.replace(scores, losses=clip_losses(scores.losses, len(self.state.generations)))

    def tell(self, candidates: np.ndarray, scores: LossResult) -> None:
        """Tell the optimizer, offer the generation's candidate to the dev selection, call back."""
        search, state, settings = self._current(), self.state, self.settings
        generation = len(state.generations)
        search.optimizer.tell(candidates, scores.losses)
        state.generations.append(
            GenerationRecord(candidates_digest(candidates), tuple(scores.losses.tolist()))
        )
        state.calls_used += len(candidates)
        # The injected mean is candidate 0; otherwise the generation offers its lowest train loss.
        offered = 0 if settings.select_from == "mean" else int(np.argmin(scores.losses))
        on_dev = (generation + 1) % settings.dev_every == 0 or generation + 1 == self.generations
        candidate = self._candidate(
            generation, candidates[offered], scores, offered, search.dev, on_dev=on_dev
        )
        state.offer(candidate, settings.select_on)
        row = self._history_row(generation, scores, offered, candidate, search.asked_at, search.train)
        for callback in search.callbacks:
            callback(self, row)

    def result_so_far(self) -> TuningResult:
        """The best-on-dev selection so far: what ``run()`` would return if it stopped now.

        Meant for tell callbacks (e.g. to score the current choice on a test set at several
        budgets of one run). ``stop_reason`` is the run's own once it stops, and
        ``StopReason.RUNNING`` while generations of the budget remain.
        """
        state, info = self._state, self._info
        if state is None or info is None or state.best is None:
            raise ClientError("no generation has finished yet; call result_so_far from a tell callback")
        return self._result(info, state, self.stop() or StopReason.RUNNING)

    # -- starting, resuming ----------------------------------------------------------------------
    def _start(
        self, info: ServerInfo, dimension: int, train: Examples, dev: Examples, *, resume: bool
    ) -> None:
        """Build the optimizer and the state (fresh, or replayed from the checkpoint) and the callbacks."""
        settings = self.settings
        config = self.config(info)
        if self.truncated:  # texts cut to this server's limit: a resume must cut them the same way
            config["fitted_texts"] = _texts_digest(train, dev)
        saved = self._load(config) if resume else None
        if saved is None:
            self._check_fresh()
        # The budget the optimizer plans for (nevergrad's choices depend on it) is the first run's.
        config[PLANNED_BUDGET] = (
            planned_budget(saved.config) if saved else self.generations * settings.popsize
        )
        optimizer = make_optimizer(
            settings.optimizer,
            OptimizerConfig(
                dimension,
                settings.popsize,
                settings.sigma0,
                settings.seed,
                config[PLANNED_BUDGET],
                include_recommendation=settings.select_from == "mean",
            ),
        )
        self._state = saved.replayed(optimizer, f"checkpoint {self.checkpoint}") if saved else TuningState()
        self._search = _Search(
            optimizer, train, dev, (*self._own_callbacks(config, optimizer), *self._callbacks)
        )

    def _own_callbacks(self, config: dict[str, Any], optimizer: Optimizer) -> list[TellCallback]:
        """The history always; patience when set; the checkpoint when the run has one."""
        own: list[TellCallback] = [record_history]
        if self.settings.patience is not None:
            own.append(Patience(self.settings.patience))
        if self.checkpoint is not None:
            assert self._key is not None, "resolved with the checkpoint, by _load or _check_fresh"
            own.append(CheckpointWriter(self.checkpoint, self._key, config, optimizer))
        return own

    def _check_fresh(self) -> None:
        if self.checkpoint is not None:
            if self.checkpoint.exists():
                raise CheckpointError(
                    f"a checkpoint already exists at {self.checkpoint}; resume it or choose another folder"
                )
            self._key = resolve_key(self._checkpoint_key)

    def _load(self, config: dict[str, Any]) -> Checkpoint:
        """The checkpoint to continue, if it was written for these settings (any budget it can reach)."""
        if self.checkpoint is None:
            raise CheckpointError("resume needs a checkpoint path")
        self._key = resolve_key(self._checkpoint_key)
        return resumable(self.checkpoint, self._key, config, self.generations, self.settings.popsize)

    # -- one generation's parts ------------------------------------------------------------------
    def _current(self) -> _Search:
        if self._search is None:
            raise ClientError("ask, evaluate and tell belong to a run in progress; call run()")
        return self._search

    def _train_scores(self, candidates: np.ndarray, train: Examples) -> LossResult:
        log_probs = self.client.evaluate(
            self.settings.adapter, candidates, train.texts, train.choices, self.task.mode, train.cue
        )
        return compute_losses(self.settings.loss, log_probs, _labels(train), with_bias=self.settings.fit_bias)

    def _candidate(
        self,
        generation: int | None,
        vector: np.ndarray,
        scores: LossResult,
        offered: int,
        dev: Examples,
        *,
        on_dev: bool,
    ) -> Candidate:
        """The candidate a generation offers to the dev selection, scored on dev when due."""
        vector = vector.astype(np.float32)
        bias = None if scores.bias is None else scores.bias[offered].copy()
        return Candidate(
            generation=generation,
            vector=vector,
            bias=bias,
            train_loss=float(scores.losses[offered]),
            dev_metrics=self._dev_metrics(vector, bias, dev) if on_dev and len(dev) > 0 else None,
        )

    def _dev_metrics(self, vector: np.ndarray, bias: np.ndarray | None, dev: Examples) -> dict[str, Any]:
        log_probs = self.client.predict(
            self.settings.adapter, vector, dev.texts, dev.choices, self.task.mode, dev.cue
        )
        labels = _labels(dev)
        adjusted = apply_bias(log_probs, bias)
        result = metrics(adjusted, labels, dev.num_choices)
        result["loss"] = float(cross_entropy(adjusted[None], labels)[0])
        return result

    def _history_row(
        self,
        generation: int,
        scores: LossResult,
        offered: int,
        candidate: Candidate,
        started: float,
        train: Examples,
    ) -> HistoryRow:
        """A generation's row (the dimension-0 run's single scoring too), timed from ``started``."""
        wall = time.perf_counter() - started
        state = self.state
        before = state.history[-1].elapsed_seconds if state.history else 0.0  # a resumed run's time goes on
        return HistoryRow(
            generation=generation,
            calls_used=state.calls_used,
            best_loss=float(scores.losses.min()),
            mean_loss=float(scores.losses.mean()),
            train_accuracy=accuracy(predictions(scores.log_probs[offered]), _labels(train)),
            dev_accuracy=candidate.dev_accuracy,
            wall_seconds=wall,
            elapsed_seconds=before + wall,
        )

    def _run_without_vector(self, train: Examples, dev: Examples) -> TuningResult:
        """A dimension-0 adapter ("none") has nothing to tune: score once, fit the bias if asked."""
        started = time.perf_counter()
        empty = np.zeros((1, 0), dtype=np.float32)
        scores = self._train_scores(empty, train)
        candidate = self._candidate(None, empty[0], scores, 0, dev, on_dev=True)
        self._state = TuningState(best=candidate, calls_used=1, stop_reason=StopReason.NO_VECTOR)
        row = self._history_row(0, scores, 0, candidate, started, train)
        for callback in (record_history, *self._callbacks):
            callback(self, row)
        return self.result_so_far()

    def _result(self, info: ServerInfo, state: TuningState, stop_reason: StopReason) -> TuningResult:
        best = state.best
        assert best is not None, "a run evaluates at least one generation"
        return TuningResult(
            vector=best.vector.copy(),
            bias=None if best.bias is None else best.bias.copy(),
            history=tuple(state.history),
            dev_metrics=best.dev_metrics,
            train_loss=best.train_loss,
            calls_used=state.calls_used,
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
