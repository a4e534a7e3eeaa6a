"""Accuracy per call (issue #6): zero-shot, ICL, BBT variants and a white-box reference, over seeds.

    .venv/bin/python -m benchmarks.accuracy [--tasks tweets,sst2,fpb] [--methods zero-shot,...]
        [--seeds 0,1,2] [--budgets 100,200,400] [--test-size 600] [--model smollm2|tiny] [--popsize 20] [--sigma0 1.0]
        [--output accuracy] [--output-dir benchmarks/results] [--datasets ../shared/datasets]
        [--white-box-lr 0.1] [--white-box-dev-every 5]

Everything black-box goes through the product: an in-process engine behind the real gRPC server on
loopback, the real ``TuningClient`` and ``Tuner``. One Tuner per (task, method, seed) runs to the
largest budget; the best-on-dev vector is scored on the test set whenever the calls used reach a
budget. Writes <output>.json (a list of runs, appended as each (task, method, seed) finishes, so an
interrupted run resumes where it stopped), <output>.md and <output>-<task>.png.

A run is ``{task, method, seed, calls, accuracy, macro_f1, predicted_class_counts, seconds}`` plus
extras (model, test_class_counts, dev_accuracy, ...). ``calls``: candidate evaluations on the train
set for the black-box methods, optimizer steps for white-box, 0 for the baselines. ``seconds``: the
tuning wall time up to that budget (dev evaluations in, test scoring out); for the baselines, the
time to score the test set.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy_data import TASKS, BenchmarkData, MissingData, load
from benchmarks.accuracy_report import CALIBRATED, plot, render
from benchmarks.harness import RESULTS, SHARED
from benchmarks.white_box import WhiteBoxConfig
from benchmarks.white_box import tune as tune_white_box
from cbpt.client.losses import accuracy, apply_bias, calibrate, macro_f1, predictions
from cbpt.client.results import HistoryRow
from cbpt.client.sdk import TuningClient
from cbpt.client.settings import TunerSettings
from cbpt.client.task import Examples, Task
from cbpt.client.tuner import Tuner
from cbpt.server.app import serve_in_background
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
}
# Every tuned run is also reported calibrated at prediction (CALIBRATED): its test log-probs mean-centred
# on the unlabelled test inputs, the same free step as zero-shot-calibrated (a fitted bias is irrelevant).
METHODS = (
    "zero-shot",
    "zero-shot-calibrated",
    "icl",
    *(name + suffix for name in TUNED for suffix in ("", CALIBRATED)),
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


class Results:
    """The JSON list of runs: read once, rewritten atomically after each finished (task, method, seed)."""

    def __init__(self, path: Path, model: str) -> None:
        self.path = path
        self.runs: list[Run] = json.loads(path.read_text()) if path.is_file() else []
        if other := sorted({r.get("model") for r in self.runs if r.get("model") not in (None, model)}):
            raise SystemExit(f"{path} holds runs of model {other[0]}, not {model}; choose another --output")

    def done(self, task: str, method: str, seed: int) -> bool:
        return any((r["task"], r["method"], r["seed"]) == (task, method, seed) for r in self.runs)

    def add(self, runs: Sequence[Run]) -> None:
        self.runs.extend(runs)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        partial.write_text("[\n" + ",\n".join(json.dumps(run) for run in self.runs) + "\n]\n")  # a run a line
        os.replace(partial, self.path)


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
            **score(log_probs, self.test.labels, len(self.data.choices)),
            "seconds": seconds,
            "model": self.engine.bundle.model_id,
            "test_class_counts": self.data.test_class_counts(),
            **extra,
        }

    def predict(self, adapter: str, vector: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        return self.client.predict(adapter, vector, texts, self.test.choices, cue=self.test.cue)


def zero_shot_log_probs(ctx: Context) -> tuple[np.ndarray, float]:
    """The test set under adapter "none", once per task (it does not depend on the seed)."""
    if ctx.data.name not in ctx.zero_shot:
        started = time.perf_counter()
        log_probs = ctx.predict("none", np.zeros(0, np.float32), ctx.test.texts)
        ctx.zero_shot[ctx.data.name] = (log_probs, time.perf_counter() - started)
    return ctx.zero_shot[ctx.data.name]


def run_zero_shot(ctx: Context) -> list[Run]:
    log_probs, seconds = zero_shot_log_probs(ctx)
    return [ctx.run("zero-shot", 0, log_probs, seconds)]


def run_calibrated(ctx: Context) -> list[Run]:
    log_probs, seconds = zero_shot_log_probs(ctx)
    return [ctx.run("zero-shot-calibrated", 0, calibrate(log_probs), seconds)]


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
    started = time.perf_counter()
    log_probs = ctx.predict("none", np.zeros(0, np.float32), [prefix + text for text in ctx.test.texts])
    return [ctx.run("icl", 0, log_probs, time.perf_counter() - started)]


def run_tuned(ctx: Context, method: str) -> list[Run]:
    tuned = TUNED[method]
    adapter = tuned.served
    settings = tuned.settings(budget=max(ctx.budgets), popsize=ctx.popsize, sigma0=ctx.sigma0, seed=ctx.seed)
    described = ctx.client.info().adapter(adapter)
    runs: list[Run] = []
    pending = sorted(ctx.budgets)

    def on_generation(row: HistoryRow) -> None:
        dev = "-" if row.dev_accuracy is None else f"{100 * row.dev_accuracy:.1f}%"
        print(
            f"  generation {row.generation + 1}: calls {row.calls_used}/{max(ctx.budgets)}, "
            f"best loss {row.best_loss:.4f}, dev accuracy {dev}, {row.elapsed_seconds:.1f} s",
            flush=True,
        )
        while pending and row.calls_used >= pending[0]:
            budget = pending.pop(0)
            result = tuner.result_so_far()
            log_probs = ctx.predict(adapter, result.vector, ctx.test.texts)
            for name, predicted in (
                (method, apply_bias(log_probs, result.bias)),
                (method + CALIBRATED, calibrate(log_probs)),
            ):
                runs.append(
                    ctx.run(
                        name,
                        budget,
                        predicted,
                        row.elapsed_seconds,
                        popsize=ctx.popsize,
                        sigma0=ctx.sigma0,
                        dimension=described.dimension,
                        prompt_length=described.prompt_length,
                        optimizer=settings.optimizer,
                        select_from=settings.select_from,
                        dev_accuracy=result.dev_accuracy,
                    )
                )

    tuner = Tuner(ctx.client, ctx.task, settings=settings, on_generation=on_generation)
    tuner.run()
    return runs


def run_white_box(ctx: Context) -> list[Run]:
    train, dev = ctx.task.train, ctx.task.dev
    assert train.labels is not None and dev.labels is not None
    records = tune_white_box(
        ctx.engine.bundle,
        cue=ctx.test.cue,
        choices=list(ctx.data.choices.values()),
        train=(train.texts, train.labels),
        dev=(dev.texts, dev.labels),
        test_texts=ctx.test.texts,
        record_at=sorted(ctx.budgets),
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
    "zero-shot": run_zero_shot,
    "zero-shot-calibrated": run_calibrated,
    "icl": run_icl,
    **{name: (lambda ctx, name=name: run_tuned(ctx, name)) for name in TUNED},
    "white-box": run_white_box,
}


def _summary(run: Run) -> str:
    return (
        f"accuracy {100 * run['accuracy']:.1f}%, macro-F1 {100 * run['macro_f1']:.1f}%, "
        f"predicted {run['predicted_class_counts']}, {run['seconds']:.1f} s"
    )


def build_engine(model: str, prompt_length: int, generators: Sequence[Path] = ()) -> ScoringEngine:
    """The server's default adapters, one BBT adapter per dimension variant in TUNED, and one CBP
    adapter per generator folder (the shipped ones for this model included), all from specs."""
    from cbpt.server.adapters import AdapterSpec, build_adapters, default_specs, generator_specs
    from cbpt.server.runtime import shipped_generator_specs

    if model == "tiny":
        from cbpt.server.testing import tiny_bundle

        bundle, dimension_scale, prompt_length = tiny_bundle(0), 16 / 500, 4
    else:
        from cbpt.server.model import load_model

        bundle, dimension_scale = load_model(model), 1.0
    specs = default_specs(round(500 * dimension_scale), prompt_length)
    placements = {spec.name: spec.placement for spec in specs}
    for tuned in sorted({t for t in TUNED.values() if t.dimension is not None}, key=lambda t: t.served):
        dimension = max(2, round((tuned.dimension or 0) * dimension_scale))
        specs.append(
            AdapterSpec(method="bbt", name=tuned.served, placement=placements[tuned.adapter], dimension=dimension,
                        prompt_length=prompt_length)
        )  # fmt: skip
    specs += shipped_generator_specs(bundle.fingerprint) + generator_specs(generators)
    return ScoringEngine(bundle, build_adapters(bundle, specs))


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=_names, default=list(TASKS))
    parser.add_argument("--methods", type=_names, default=list(RUNNERS))
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--budgets", type=_ints, default=[100, 200, 400])
    parser.add_argument("--test-size", type=int, default=600)
    parser.add_argument(
        "--model", default="smollm2", help="'smollm2', 'tiny' (plumbing only) or a HF id/folder"
    )
    parser.add_argument("--popsize", type=int, default=20)
    parser.add_argument("--sigma0", type=float, default=1.0, help="CMA-ES initial step of the tuned methods")
    parser.add_argument("--output", default="accuracy")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--datasets", type=Path, default=SHARED, help="the shared datasets folder")
    parser.add_argument("--white-box-lr", type=float, default=WhiteBoxConfig.learning_rate)
    parser.add_argument("--white-box-dev-every", type=int, default=WhiteBoxConfig.dev_every)
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.tasks) - set(TASKS)):
        parser.error(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    if unknown := sorted(set(args.methods) - set(RUNNERS)):
        derived = [
            f"{name} (comes with {name.removesuffix(CALIBRATED)})" for name in unknown if name in METHODS
        ]
        parser.error(f"unknown method(s) {', '.join(derived or unknown)}; known: {', '.join(RUNNERS)}")
    if not args.seeds or not args.budgets:
        parser.error("give at least one seed and one budget")
    if bad := [b for b in args.budgets if b < args.popsize or b % args.popsize]:
        parser.error(f"budgets must be positive multiples of --popsize {args.popsize}: {bad}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    out: Path = args.output_dir
    white_box = WhiteBoxConfig(learning_rate=args.white_box_lr, dev_every=args.white_box_dev_every)
    datas: dict[str, BenchmarkData] = {}
    for name in args.tasks:
        try:
            datas[name] = load(name, args.datasets, out / ".data", args.test_size)
        except MissingData as error:
            print(f"skipping task {name}: {error}", flush=True)
            continue
        print(f"task {name}: test per class {datas[name].test_class_counts()}", flush=True)
    engine = build_engine(args.model, white_box.prompt_length)
    results = Results(out / f"{args.output}.json", engine.bundle.model_id)
    zero_shot: dict[str, tuple[np.ndarray, float]] = {}
    with serve_in_background(engine) as target, TuningClient(target, timeout=3600) as client:
        for seed in args.seeds:
            for data in datas.values():
                task = data.task(seed)
                context = Context(
                    client=client,
                    engine=engine,
                    data=data,
                    task=task,
                    test=data.test(task),
                    seed=seed,
                    budgets=args.budgets,
                    popsize=args.popsize,
                    sigma0=args.sigma0,
                    white_box=white_box,
                    zero_shot=zero_shot,
                )
                for method in args.methods:
                    run_one(context, method, results)
    report(results.runs, args, out)


def run_one(context: Context, method: str, results: Results) -> None:
    """One (task, method, seed), unless the results already hold it; appended as soon as it finishes."""
    label = f"[{context.data.name} {method} seed {context.seed}]"
    if results.done(context.data.name, method, context.seed):
        print(f"{label} already in {results.path.name}; skipped", flush=True)
        return
    print(f"{label} running", flush=True)
    runs = RUNNERS[method](context)
    results.add(runs)
    for run in runs:
        print(f"{label} calls {run['calls']}: {_summary(run)}", flush=True)


def report(runs: list[Run], args: argparse.Namespace, out: Path) -> None:
    if not runs:
        print("no runs to report", flush=True)
        return
    md = out / f"{args.output}.md"
    md.write_text(render(runs, tasks=TASKS, methods=METHODS))
    print(f"wrote {out / f'{args.output}.json'} and {md}", flush=True)
    for task in sorted({run["task"] for run in runs}):
        path = plot(runs, task, out / f"{args.output}-{task}.png", METHODS)
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
