"""The accuracy benchmark's methods: baselines, tuned black-box methods and the white-box reference.

Every method returns runs: ``{task, method, seed, calls, accuracy, macro_f1, predicted_class_counts,
seconds}`` plus extras. A tuned method is a server adapter and the tuner settings it differs in;
each of its runs is also reported three ways from the same test log-probs, which costs no call:
``-calibrated`` (mean-centred on the unlabelled test inputs instead of the fitted bias) and
``-prior`` (the fitted bias, then the user's own label prior, ``Task.label_prior``, added).
Budget 0 is the adapter at z = 0 (for a generator, z0: the domain prompt before any user call),
with the bias fitted there when the method fits one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.accuracy_data import BenchmarkData
from benchmarks.accuracy_report import BASELINES, CALIBRATED, PRIOR
from benchmarks.white_box import WhiteBoxConfig
from benchmarks.white_box import tune as tune_white_box
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.results import HistoryRow
from cbpt.client.tuning.settings import TunerSettings
from cbpt.client.tuning.tuner import Tuner
from cbpt.common.losses import (
    accuracy,
    apply_bias,
    apply_prior,
    calibrate,
    compute_losses,
    macro_f1,
    metrics,
    predictions,
)
from cbpt.common.tasks.fitting import fit_examples
from cbpt.common.tasks.task import Examples, Task
from cbpt.server.engine import ScoringEngine

Run = dict[str, Any]


@dataclass(frozen=True)
class Tuned:
    """A tuned black-box method: the server adapter and the tuner settings it differs in.

    ``overrides`` are ``TunerSettings`` fields (fit_bias, select_on, select_from, optimizer, ...);
    the run's budget, popsize, sigma0, seed and the ce loss come from the benchmark's own options.
    """

    adapter: str
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)
    dimension: int | None = None  # z's length when not the server default (500): an extra adapter

    @property
    def served(self) -> str:
        """The adapter name on the benchmark's server: a dimension variant is served under its own name."""
        return self.adapter if self.dimension is None else f"{self.adapter}-r{self.dimension}"

    def settings(self, **run: Any) -> TunerSettings:
        """The tuner settings of one run: the method's overrides on top of the run's own settings."""
        return TunerSettings(adapter=self.served, loss="ce", **run).replace(**self.overrides)


BIAS = {"fit_bias": True}
ZMODE_PREFIX = "cbp-opinion-zmode-"
TUNED = {
    "bbt": Tuned("bbt"),
    "bbt-suffix": Tuned("bbt-suffix"),
    "bbt-suffix-bias": Tuned("bbt-suffix", BIAS),
    "bbt-cue-bias": Tuned("bbt-cue", BIAS),
    "bbt-cue-bias-devloss": Tuned("bbt-cue", {**BIAS, "select_on": "loss"}),
    "bbt-suffix-bias-devloss": Tuned("bbt-suffix", {**BIAS, "select_on": "loss"}),
    "bbt-cue-bias-ngopt": Tuned("bbt-cue", {**BIAS, "optimizer": "ng:NGOpt"}),
    "bbt-cue-bias-diagonalcma": Tuned("bbt-cue", {**BIAS, "optimizer": "ng:DiagonalCMA"}),
    "bbt-cue-bias-tbpsa": Tuned("bbt-cue", {**BIAS, "optimizer": "ng:TBPSA"}),
    "bbt-cue-bias-r100": Tuned("bbt-cue", BIAS, dimension=100),
    "bbt-cue-bias-r50": Tuned("bbt-cue", BIAS, dimension=50),
    "bbt-cue-bias-mean": Tuned("bbt-cue", {**BIAS, "select_from": "mean"}),
    # CBP-Tuning: the provider's opinion generator (trained on SST-2 train and tweets), and the one that
    # never saw a tweet (SST-2 only), each searched from z0 by the user's CMA-ES.
    "cbp-opinion": Tuned("cbp-opinion"),
    "cbp-opinion-bias": Tuned("cbp-opinion", BIAS),
    "cbp-opinion-no-tweets": Tuned("cbp-opinion-no-tweets"),
    "cbp-opinion-no-tweets-bias": Tuned("cbp-opinion-no-tweets", BIAS),
    # The domain generators (generators/<domain>, served as cbp-<domain>): each tuned on its domain's
    # unseen tasks (PIQA and COPA, PubMedQA, Financial PhraseBank) and on one task it trained on.
    **{
        f"cbp-{domain}{suffix}": Tuned(f"cbp-{domain}", overrides)
        for domain in ("commonsense", "medical", "financial")
        for suffix, overrides in (("", {}), ("-bias", BIAS))
    },
    # The shipped recipe retrained with each --z-mode: z = 0 (only z0 learns), z drawn around z0 (the
    # shipped mode, a second training run) or a learned z per training task; served as
    # --generator cbp-opinion-zmode-<mode>=DIR.
    **{
        f"{ZMODE_PREFIX}{mode}{suffix}": Tuned(f"{ZMODE_PREFIX}{mode}", overrides)
        for mode in ("zero", "noise", "task")
        for suffix, overrides in (("", {}), ("-bias", BIAS))
    },
}
METHODS = (
    *BASELINES,
    *(name + suffix for name in TUNED for suffix in ("", CALIBRATED, PRIOR)),
    "white-box",
    "white-box" + CALIBRATED,
)


def score(log_probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    predicted = predictions(log_probs)
    return {
        "accuracy": accuracy(predicted, labels),
        "macro_f1": macro_f1(predicted, labels, num_classes),
        "predicted_class_counts": np.bincount(predicted, minlength=num_classes).tolist(),
    }


@dataclass
class Context:
    client: TuningClient
    engine: ScoringEngine
    data: BenchmarkData
    task: Task
    test: Examples
    seed: int
    budgets: list[int]
    popsize: int
    sigma0: float
    white_box: WhiteBoxConfig
    zero_shot: dict[str, tuple[np.ndarray, float]]  # per task: test log-probs of adapter "none", seconds

    def run(self, method: str, calls: int, log_probs: np.ndarray, seconds: float, **extra: Any) -> Run:
        assert self.test.labels is not None
        return {
            "task": self.data.name,
            "method": method,
            "seed": self.seed,
            "calls": calls,
            **score(log_probs, self.test.labels, self.data.width),
            "seconds": seconds,
            "model": self.engine.bundle.model_id,
            "test_class_counts": self.data.test_class_counts(),
            **extra,
        }

    def predict(self, adapter: str, vector: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        return self.client.predict(
            adapter, vector, texts, self.test.choices, self.task.mode, cue=self.test.cue
        )


def zero_shot_log_probs(ctx: Context) -> tuple[np.ndarray, float]:
    """The test set under adapter "none", once per task (it does not depend on the seed)."""
    if ctx.data.name not in ctx.zero_shot:
        started = time.perf_counter()
        log_probs = ctx.predict("none", np.zeros(0, np.float32), ctx.test.texts)
        ctx.zero_shot[ctx.data.name] = (log_probs, time.perf_counter() - started)
    return ctx.zero_shot[ctx.data.name]


def run_majority(ctx: Context) -> list[Run]:
    """Always the test split's most frequent class: what accuracy alone rewards on a skewed mix."""
    assert ctx.test.labels is not None
    width = ctx.data.width
    majority = int(np.bincount(ctx.test.labels, minlength=width).argmax())
    log_probs = np.log(np.full((len(ctx.test), width), 1e-6))
    log_probs[:, majority] = 0.0
    return [ctx.run("majority", 0, log_probs, 0.0)]


def run_zero_shot(ctx: Context) -> list[Run]:
    log_probs, seconds = zero_shot_log_probs(ctx)
    return [ctx.run("zero-shot", 0, log_probs, seconds)]


def run_calibrated(ctx: Context) -> list[Run]:
    log_probs, seconds = zero_shot_log_probs(ctx)
    calibrated = calibrate(log_probs)
    return [
        ctx.run("zero-shot-calibrated", 0, calibrated, seconds),
        ctx.run("zero-shot-calibrated" + PRIOR, 0, apply_prior(calibrated, ctx.task.label_prior()), seconds),
    ]


def demonstrations(task: Task, seed: int) -> str:
    """One train shot per class, templated with its answer, in a seeded order."""
    train = task.train
    assert train.labels is not None
    picked = [int(np.flatnonzero(train.labels == label)[0]) for label in range(train.num_choices)]
    order = np.random.default_rng(seed).permutation(picked)
    return "".join(
        f"{train.texts[i]}{train.cue}{train.choices.of_example(i)[train.labels[i]]}\n\n" for i in order
    )


def run_icl(ctx: Context) -> list[Run]:
    prefix = demonstrations(ctx.task, ctx.seed)
    texts = [prefix + text for text in ctx.test.texts]
    limits = ctx.client.info().limits
    longest = max(map(len, texts))
    if (limits.max_text_chars and longest > limits.max_text_chars) or (
        limits.max_text_tokens and max(ctx.client.count_tokens(texts)) > limits.max_text_tokens
    ):  # long passages: no room for a shot per class
        print(
            f"  icl skipped on {ctx.data.name}: its demonstrations do not fit the server's text limits",
            flush=True,
        )
        return []
    started = time.perf_counter()
    log_probs = ctx.predict("none", np.zeros(0, np.float32), texts)
    seconds = time.perf_counter() - started
    # Its calibrated form: the same test log-probs mean-centred on the unlabelled test inputs.
    return [
        ctx.run("icl", 0, log_probs, seconds),
        ctx.run("icl" + CALIBRATED, 0, calibrate(log_probs), seconds),
    ]


def _reported(
    ctx: Context, method: str, log_probs: np.ndarray, bias: np.ndarray | None
) -> list[tuple[str, np.ndarray]]:
    """The three reports of one tuned vector's test log-probs: its bias, calibrated, bias + prior."""
    with_bias = apply_bias(log_probs, bias)
    return [
        (method, with_bias),
        (method + CALIBRATED, calibrate(log_probs)),
        (method + PRIOR, apply_prior(with_bias, ctx.task.label_prior())),
    ]


def _at_zero(ctx: Context, method: str, settings: TunerSettings, extra: dict[str, Any]) -> list[Run]:
    """Budget 0: z = 0 (a generator's z0), with the bias fitted there on the train shots if the method
    fits one."""
    started = time.perf_counter()
    dimension = extra["dimension"]
    zero = np.zeros(dimension, np.float32)
    truncate = ctx.task.truncate
    train = fit_examples(ctx.client, ctx.task.train, truncate, f"{ctx.data.name} train").examples
    dev = fit_examples(ctx.client, ctx.task.dev, truncate, f"{ctx.data.name} dev").examples
    mode = ctx.task.mode
    bias = None
    if settings.fit_bias:
        train_log_probs = ctx.client.predict(
            settings.adapter, zero, train.texts, train.choices, mode, cue=train.cue
        )
        assert train.labels is not None
        bias = compute_losses("ce", train_log_probs[None], train.labels, with_bias=True).bias
        bias = None if bias is None else bias[0]
    dev_log_probs = apply_bias(
        ctx.client.predict(settings.adapter, zero, dev.texts, dev.choices, mode, cue=dev.cue), bias
    )
    assert dev.labels is not None
    dev_metrics = metrics(dev_log_probs, dev.labels, dev.num_choices)
    seconds = time.perf_counter() - started
    log_probs = ctx.predict(settings.adapter, zero, ctx.test.texts)
    return [
        ctx.run(
            name,
            0,
            predicted,
            seconds,
            dev_accuracy=dev_metrics["accuracy"],
            dev_macro_f1=dev_metrics["macro_f1"],
            **extra,
        )
        for name, predicted in _reported(ctx, method, log_probs, bias)
    ]


def run_tuned(ctx: Context, method: str) -> list[Run]:
    tuned = TUNED[method]
    adapter = tuned.served
    searched = [budget for budget in ctx.budgets if budget > 0]
    settings = tuned.settings(
        budget=max(searched or [ctx.popsize]), popsize=ctx.popsize, sigma0=ctx.sigma0, seed=ctx.seed
    )
    described = ctx.client.info().adapter(adapter)
    extra = {
        "popsize": ctx.popsize,
        "sigma0": ctx.sigma0,
        "dimension": described.dimension,
        "prompt_length": described.prompt_length,
        "placement": described.placement,
        "optimizer": settings.optimizer,
        "select_from": settings.select_from,
    }
    runs: list[Run] = _at_zero(ctx, method, settings, extra) if 0 in ctx.budgets else []
    pending = sorted(searched)

    def on_generation(tuner: Tuner, row: HistoryRow) -> None:
        dev = "-" if row.dev_accuracy is None else f"{100 * row.dev_accuracy:.1f}%"
        print(
            f"  generation {row.generation + 1}: calls {row.calls_used}/{settings.budget}, "
            f"best loss {row.best_loss:.4f}, dev accuracy {dev}, {row.elapsed_seconds:.1f} s",
            flush=True,
        )
        while pending and row.calls_used >= pending[0]:
            budget = pending.pop(0)
            result = tuner.result_so_far()
            log_probs = ctx.predict(adapter, result.vector, ctx.test.texts)
            dev_f1 = None if result.dev_metrics is None else result.dev_metrics["macro_f1"]
            for name, predicted in _reported(ctx, method, log_probs, result.bias):
                runs.append(
                    ctx.run(name, budget, predicted, row.elapsed_seconds, dev_accuracy=result.dev_accuracy,
                            dev_macro_f1=dev_f1, **extra)
                )  # fmt: skip

    if searched:
        tuner = Tuner(ctx.client, ctx.task, settings=settings)
        tuner.register_callback("tell", on_generation)
        tuner.run()
    return runs


def run_white_box(ctx: Context) -> list[Run]:
    if ctx.data.choices is None:  # its scorer takes one fixed choice list
        print(
            f"  white-box skipped on {ctx.data.name}: it scores fixed choices, not per-row options",
            flush=True,
        )
        return []
    train, dev = ctx.task.train, ctx.task.dev
    assert train.labels is not None and dev.labels is not None
    records = tune_white_box(
        ctx.engine.bundle,
        cue=ctx.test.cue,
        choices=list(ctx.data.choices.values()),
        train=(train.texts, train.labels),
        dev=(dev.texts, dev.labels),
        test_texts=ctx.test.texts,
        record_at=sorted(budget for budget in ctx.budgets if budget > 0),
        seed=ctx.seed,
        config=ctx.white_box,
        log=lambda line: print(f"  {line}", flush=True),
    )
    return [
        ctx.run(
            name,
            record.steps,
            log_probs,
            record.seconds,
            dev_accuracy=record.dev_accuracy,
            calls_unit="optimizer steps",
            prompt_length=ctx.white_box.prompt_length,
        )
        for record in records
        for name, log_probs in (
            ("white-box", record.log_probs),
            ("white-box" + CALIBRATED, calibrate(record.log_probs)),
        )
    ]


RUNNERS: dict[str, Callable[[Context], list[Run]]] = {
    "majority": run_majority,
    "zero-shot": run_zero_shot,
    "zero-shot-calibrated": run_calibrated,
    "icl": run_icl,
    **{name: (lambda ctx, name=name: run_tuned(ctx, name)) for name in TUNED},
    "white-box": run_white_box,
}
