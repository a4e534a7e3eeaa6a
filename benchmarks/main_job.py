"""The README's main job before and after the speed work of issue #4, side by side in one run.

    .venv/bin/python -m benchmarks.main_job [--budget 100] [--model smollm2]

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

import numpy as np

from benchmarks.harness import ROOT, machine, write_json, write_text
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.tuner import Tuner
from cbpt.common.losses import accuracy, apply_bias, calibrate, predictions
from cbpt.common.tasks.task import Task
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.front.app import serve_in_background
from cbpt.server.model import load_model
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
    if not TEST.is_file():
        subprocess.run([sys.executable, str(ROOT / "examples" / "tweets" / "prepare.py")], check=True)
    task = Task.from_file(TASK).model_copy(update={"seed": args.seed})
    test = task.load_examples(TEST)
    assert test.labels is not None
    bundle = tiny_bundle(0) if args.model == "tiny" else load_model(args.model)
    served = ServedAdapters(shipped_generators=False)  # zero-shot and BBT in three placements
    warm = ScoringEngine(bundle, served.build(bundle))  # one-off start-up costs stay out of every timing
    warm.score(ScoreRequest("bbt", np.zeros((2, 500), np.float32), test.texts[:8], test.choices))
    rows = []
    for label, adapter, options in CONFIGURATIONS:
        engine = ScoringEngine(bundle, served.build(bundle), **options)
        with serve_in_background(engine) as target, TuningClient(target) as client:
            zero = client.predict("none", np.zeros(0, np.float32), test.texts, test.choices, cue=test.cue)
            tuner = Tuner(
                client,
                task,
                adapter=adapter,
                budget=args.budget,
                popsize=args.popsize,
                fit_bias=True,
                seed=args.seed,
            )
            started = time.perf_counter()
            result = tuner.run()
            seconds = time.perf_counter() - started
            tuned = client.predict(adapter, result.vector, test.texts, test.choices, cue=test.cue)
        rows.append(
            {
                "configuration": label,
                "adapter": adapter,
                "engine_options": options,
                "tuning_seconds": seconds,
                "calls": result.calls_used,
                "held_out_accuracy": accuracy(predictions(apply_bias(tuned, result.bias)), test.labels),
                "zero_shot_accuracy": accuracy(predictions(zero), test.labels),
                "calibrated_zero_shot_accuracy": accuracy(predictions(calibrate(zero)), test.labels),
            }
        )
        print(f"{label}: {seconds:.0f} s, held-out {rows[-1]['held_out_accuracy']:.1%}", flush=True)
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
        f"(zero-shot {first['zero_shot_accuracy']:.1%}, calibrated {first['calibrated_zero_shot_accuracy']:.1%}). "
        "All configurations ran in one process, one after another, on the same model.",
        "",
        "| configuration | tuning time | speed-up vs before | held-out accuracy |",
        "|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['configuration']} | {run['tuning_seconds']:.0f} s | {before / run['tuning_seconds']:.2f}x "
            f"| {run['held_out_accuracy']:.1%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
