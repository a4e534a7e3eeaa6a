"""Accuracy per call: baselines, ICL, BBT and CBP-Tuning variants and a white-box reference, over seeds.

    .venv/bin/python -m benchmarks.accuracy [--tasks tweets,sst2,fpb,fpb-natural] [--methods zero-shot,...]
        [--seeds 0,1,2] [--budgets 0,50,100,200,400] [--test-size 600] [--model smollm2|tiny] [--popsize 20]
        [--sigma0 1.0] [--generator [NAME=]DIR ...] [--text-cache-mb 256] [--output accuracy]
        [--output-dir benchmarks/results] [--datasets ../shared/datasets] [--prepared generators]
        [--white-box-lr 0.1]
        [--white-box-dev-every 5] [--score-noise 0.0] [--score-decimals N]

``--tasks`` also takes the domain generators' tasks (accuracy_domains.py: piqa, copa, boolq, pubmedqa,
abstracts, fintweets; read from generators/<domain>/data/ after its prepare.py), for the methods
cbp-commonsense, cbp-medical and cbp-financial (with -bias). Methods and their derived reports are in
accuracy_methods.py; the report (accuracy_report.py)
chooses each method's budget on the dev split and reads the test split for that choice only.

Everything black-box goes through the product: an in-process engine behind the real gRPC server on
loopback, the real ``TuningClient`` and ``Tuner``. One Tuner per (task, method, seed) runs to the
largest budget; the best-on-dev vector is scored on the test set whenever the calls used reach a
budget. ``--score-noise`` / ``--score-decimals`` turn on the server's protection of its log-probs
(a fixed noise seed, so a run is repeatable): what it costs the tuner, against a run without, same
seeds; give such a run its own ``--output``. Writes <output>.json (a list of runs, appended as each
(task, method, seed) finishes, so an interrupted run resumes where it stopped), <output>.md and
<output>-<task>.png.

A run is ``{task, method, seed, calls, accuracy, macro_f1, predicted_class_counts, seconds}`` plus
extras (model, test_class_counts, dev_accuracy, ...). ``calls``: candidate evaluations on the train
set for the black-box methods, optimizer steps for white-box, 0 for the baselines. ``seconds``: the
tuning wall time up to that budget (dev evaluations in, test scoring out); for the baselines, the
time to score the test set.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.accuracy_data import KNOWN_TASKS, TASKS, BenchmarkData, MissingData, load
from benchmarks.accuracy_domains import GENERATORS
from benchmarks.accuracy_methods import METHODS, RUNNERS, TUNED, ZMODE_PREFIX, Context, Run
from benchmarks.accuracy_report import DERIVED, plot, plot_families, render
from benchmarks.harness import RESULTS, SHARED
from benchmarks.white_box import WhiteBoxConfig
from cbpt.client.rpc.sdk import TuningClient
from cbpt.common.limits import Limits
from cbpt.common.tasks.fitting import fit_examples
from cbpt.server.engine import ScoringEngine
from cbpt.server.engine.kv import TextStateCache
from cbpt.server.front.app import serve_in_background
from cbpt.server.model import DTYPES
from cbpt.server.settings import ServerSettings


class Results:
    """The JSON list of runs, rewritten atomically after each finished (task, method, seed).

    Several benchmark processes may share one file (e.g. one thread each on different methods):
    each write takes a lock, re-reads the file and adds only runs it does not hold yet.
    """

    def __init__(self, path: Path, model: str, extras: dict[str, object] | None = None) -> None:
        self.path = path
        self.extras = extras or {}  # stamped on every run added (the server's protection, when on)
        self.model = model
        self.runs: list[Run] = self._read()

    def _read(self) -> list[Run]:
        runs: list[Run] = json.loads(self.path.read_text()) if self.path.is_file() else []
        if other := sorted({r.get("model") for r in runs if r.get("model") not in (None, self.model)}):
            raise SystemExit(
                f"{self.path} holds runs of model {other[0]}, not {self.model}; choose another --output"
            )
        return runs

    def done(self, task: str, method: str, seed: int) -> bool:
        self.runs = self._read()
        return any((r["task"], r["method"], r["seed"]) == (task, method, seed) for r in self.runs)

    def add(self, runs: Sequence[Run]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.runs = self._read()
            held = {_key(run) for run in self.runs}
            self.runs.extend({**run, **self.extras} for run in runs if _key(run) not in held)  # type: ignore[misc]
            partial = self.path.with_suffix(".json.partial")
            partial.write_text(
                "[\n" + ",\n".join(json.dumps(run) for run in self.runs) + "\n]\n"
            )  # a run a line
            os.replace(partial, self.path)


def _key(run: Run) -> tuple[str, str, int, int]:
    return run["task"], run["method"], run["seed"], run["calls"]


def _summary(run: Run) -> str:
    return (
        f"accuracy {100 * run['accuracy']:.1f}%, macro-F1 {100 * run['macro_f1']:.1f}%, "
        f"predicted {run['predicted_class_counts']}, {run['seconds']:.1f} s"
    )


# PIQA's solutions run to about 250 SmolLM2 tokens (1,000 characters and more; the tiny test model's
# tokenizer takes nearly one a character), scored whole (full_choice); the server's defaults are 16
# tokens, 256 characters.
MAX_CHOICE_TOKENS = 1024
MAX_CHOICE_CHARS = 4096


def build_engine(
    model: str,
    prompt_length: int,
    generators: Sequence[tuple[str | None, Path]] = (),
    text_cache_mb: int = 256,
    threads: int | None = None,
    dtype: str = "auto",
) -> ScoringEngine:
    """The server's default adapters, one BBT adapter per dimension variant in TUNED, and one CBP
    adapter per generator folder (the shipped ones for this model included), all from specs."""
    from cbpt.server.adapters import AdapterSpec, ServedAdapters, build_adapters

    if model == "tiny":
        from cbpt.server.testing import tiny_bundle

        bundle, dimension_scale, prompt_length = tiny_bundle(0), 16 / 500, 4
    else:
        from cbpt.server.model import load_model

        bundle, dimension_scale = load_model(model, threads=threads, dtype=DTYPES[dtype]), 1.0
    served = ServedAdapters(bbt_dimension=round(500 * dimension_scale), prompt_length=prompt_length)
    specs = served.chosen(bundle.fingerprint, bundle.hidden_size).specs  # the shipped generators included
    placements = {spec.name: spec.placement for spec in specs}
    for tuned in sorted({t for t in TUNED.values() if t.dimension is not None}, key=lambda t: t.served):
        dimension = max(2, round((tuned.dimension or 0) * dimension_scale))
        specs.append(
            AdapterSpec(method="bbt", name=tuned.served, placement=placements[tuned.adapter],
                        dimension=dimension, prompt_length=prompt_length)
        )  # fmt: skip
    specs += [AdapterSpec(method="cbp", name=name, generator=folder) for name, folder in generators]
    cache = TextStateCache(max_bytes_per_scope=text_cache_mb << 20, max_bytes=text_cache_mb << 20)
    limits = Limits(max_choice_tokens=MAX_CHOICE_TOKENS, max_choice_chars=MAX_CHOICE_CHARS)
    return ScoringEngine(bundle, build_adapters(bundle, specs), limits, text_states=cache)


def _source(name: str) -> str:
    """The method a derived report comes with (``x-calibrated`` comes with ``x``)."""
    for suffix in DERIVED:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _generator(text: str) -> tuple[str | None, Path]:
    """``DIR`` or ``NAME=DIR``: a name serves two generators of one domain side by side."""
    name, separator, folder = text.rpartition("=")
    return (name, Path(folder)) if separator and name else (None, Path(text))


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=_names, default=list(TASKS))
    parser.add_argument("--methods", type=_names, default=list(RUNNERS))
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--budgets", type=_ints, default=[100, 200, 400], help="0: z = 0 (a generator's z0)")
    parser.add_argument("--test-size", type=int, default=600)
    parser.add_argument(
        "--model", default="smollm2", help="'smollm2', 'tiny' (plumbing only) or a HF id/folder"
    )
    parser.add_argument("--popsize", type=int, default=20)
    parser.add_argument("--sigma0", type=float, default=1.0, help="CMA-ES initial step of the tuned methods")
    parser.add_argument("--output", default="accuracy")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--datasets", type=Path, default=SHARED, help="the shared datasets folder")
    parser.add_argument(
        "--prepared",
        type=Path,
        default=GENERATORS,
        help="the folder of the domains' prepared data (<domain>/data/, written by their prepare.py)",
    )
    parser.add_argument(
        "--generator",
        type=_generator,
        action="append",
        default=[],
        help="a CBP generator folder to serve, as DIR (named cbp-<domain>) or NAME=DIR",
    )
    parser.add_argument(
        "--text-cache-mb", type=int, default=256, help="per-scope text-state cache of the engine"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="auto",
        help="the server's --dtype (bfloat16: the model id says so, so give another --output)",
    )
    parser.add_argument("--white-box-lr", type=float, default=WhiteBoxConfig.learning_rate)
    parser.add_argument("--white-box-dev-every", type=int, default=WhiteBoxConfig.dev_every)
    parser.add_argument(
        "--score-noise", type=float, default=0.0, help="the server's --score-noise (std of log-prob noise)"
    )
    parser.add_argument("--score-decimals", type=int, default=None, help="the server's --score-decimals")
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.tasks) - set(KNOWN_TASKS)):
        parser.error(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(KNOWN_TASKS)}")
    if unknown := sorted(set(args.methods) - set(RUNNERS)):
        derived = [f"{name} (comes with {_source(name)})" for name in unknown if name in METHODS]
        parser.error(f"unknown method(s) {', '.join(derived or unknown)}; known: {', '.join(RUNNERS)}")
    if not args.seeds or not args.budgets:
        parser.error("give at least one seed and one budget")
    if bad := [b for b in args.budgets if b < 0 or b % args.popsize]:
        parser.error(f"budgets must be 0 or positive multiples of --popsize {args.popsize}: {bad}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    out: Path = args.output_dir
    white_box = WhiteBoxConfig(learning_rate=args.white_box_lr, dev_every=args.white_box_dev_every)
    datas: dict[str, BenchmarkData] = {}
    for name in args.tasks:
        try:
            datas[name] = load(name, args.datasets, out / ".data", args.test_size, args.prepared)
        except MissingData as error:
            print(f"skipping task {name}: {error}", flush=True)
            continue
        print(f"task {name}: test per class {datas[name].test_class_counts()}", flush=True)
    engine = build_engine(
        args.model, white_box.prompt_length, args.generator, args.text_cache_mb, args.threads, args.dtype
    )
    protection = {"score_noise": args.score_noise} if args.score_noise else {}
    if args.score_decimals is not None:
        protection["score_decimals"] = args.score_decimals
    results = Results(out / f"{args.output}.json", engine.bundle.model_id, protection)
    zero_shot: dict[str, tuple[np.ndarray, float]] = {}
    with (
        serve_in_background(engine, server_settings(args)) as target,
        TuningClient(target, timeout=3600) as client,
    ):
        for seed in args.seeds:
            for data in datas.values():
                task = data.task(seed)
                context = Context(
                    client=client,
                    engine=engine,
                    data=data,
                    task=task,
                    test=fit_examples(client, data.test(task), task.truncate, f"{data.name} test").examples,
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


def server_settings(args: argparse.Namespace) -> ServerSettings:
    """The loopback server the benchmark tunes through, with the provider protection asked for."""
    return ServerSettings.from_flags(
        host="127.0.0.1",
        port=0,
        insecure=True,
        allow_no_auth=True,
        score_noise=args.score_noise,
        score_noise_seed=0,
        score_decimals=args.score_decimals,
        max_choice_tokens=MAX_CHOICE_TOKENS,  # what GetServerInfo states; the engine enforces its own
        max_choice_chars=MAX_CHOICE_CHARS,
    )


def run_one(context: Context, method: str, results: Results) -> None:
    """One (task, method, seed), unless the results already hold it; appended as soon as it finishes."""
    label = f"[{context.data.name} {method} seed {context.seed}]"
    if results.done(context.data.name, method, context.seed):
        print(f"{label} already in {results.path.name}; skipped", flush=True)
        return
    served = {adapter.name for adapter in context.client.info().adapters}
    if method in TUNED and TUNED[method].served not in served:
        print(
            f"{label} skipped: the server has no adapter {TUNED[method].served!r} (see --generator)",
            flush=True,
        )
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
    md.write_text(render(runs, tasks=KNOWN_TASKS, methods=METHODS))
    print(f"wrote {out / f'{args.output}.json'} and {md}", flush=True)
    overview = [run for run in runs if not run["method"].startswith(ZMODE_PREFIX)]  # they have their own plot
    for task in sorted({run["task"] for run in runs}):
        path = plot(overview, task, out / f"{args.output}-{task}.png", METHODS)
        print(f"wrote {path}", flush=True)
        methods = {run["method"] for run in runs if run["task"] == task}
        if any(method.startswith("cbp") for method in methods):
            path = plot_families(
                runs,
                task,
                out / f"{args.output}-{task}-cbp-vs-bbt.png",
                ("bbt", "cbp"),
                exclude=(ZMODE_PREFIX,),
            )
            print(f"wrote {path}", flush=True)
        tuned_zmodes = any(
            run["method"].startswith(ZMODE_PREFIX) and run["calls"] for run in runs if run["task"] == task
        )
        if tuned_zmodes:  # the shipped recipe against its z modes, where they were tuned (not z0 only)
            path = plot_families(
                runs, task, out / f"{args.output}-{task}-zmode.png", ("cbp-opinion-bias", ZMODE_PREFIX)
            )
            print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
