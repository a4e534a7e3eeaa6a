"""bfloat16 on CPU, the opt-in ``--dtype bfloat16``: the same work in float32 and bfloat16 in one run.

Issue #24 found eager float32 at its ceiling on this CPU (the ``ceiling`` and ``compiled`` sections).
CPUs with AMX or AVX512-BF16 multiply bfloat16 in hardware, several times faster than float32, at
the cost of scores that move. This section (``--sections bf16`` of benchmarks/throughput.py) loads
the served model twice, float32 (the default) and bfloat16, and runs on each:

- ``generation``: one on-cue generation of the main job's adapter (``cbp-opinion``, or ``bbt-cue``
  where no generator is served), popsize 20 over 48 cached short texts; the dtypes interleaved three
  times, medians, each timed against a 2048³ matmul in its own dtype just before;
- ``evaluate``: the whole SST-2 dev set (872 sentences) under one vector of that adapter (what
  ``cbpt evaluate`` and ``predict`` run) and zero-shot (adapter ``none``): rows per second, and the
  zero-shot and calibrated accuracy;
- ``main job``: the README's main job (tweets, 200 calls, popsize 20, seed 0, bias on the client),
  its tuning time and held-out accuracy.

Every bfloat16 score is compared with float32's (the largest log-prob difference).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from benchmarks.harness import CHOICES, CUE, matmul_flops, score_all, sst2_dev, sst2_texts
from benchmarks.main_job import tune_once, tweets_task
from cbpt.common.losses import accuracy, calibrate, predictions
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.model import ModelBundle, cpu_runs_bf16_natively

POPSIZE = 20
REPEATS = 3


def bf16_section(
    float32: ModelBundle, bfloat16: ModelBundle, params: int, budget: int = 200
) -> dict[str, Any]:
    """Each piece of work on both bundles (the same weights), with speed-ups and score differences."""
    bundles = {"float32": float32, "bfloat16": bfloat16}
    engines = {name: ScoringEngine(b, ServedAdapters().build(b)) for name, b in bundles.items()}
    adapter = "cbp-opinion" if "cbp-opinion" in engines["float32"].adapters else "bbt-cue"
    return {
        "adapter": adapter,
        "model_ids": {name: b.model_id for name, b in bundles.items()},
        "native_bf16": cpu_runs_bf16_natively(),
        "generation": _generation(engines, adapter, params),
        "evaluate": _evaluate(engines, adapter),
        "main_job": _main_job(engines, adapter, budget),
    }


def _generation(engines: dict[str, ScoringEngine], adapter: str, params: int) -> dict[str, Any]:
    texts = [f"Review: {text}" for text in sst2_texts(48, seed=0)]
    dimension = engines["float32"].adapters[adapter].dimension
    candidates = np.random.default_rng(0).standard_normal((POPSIZE, dimension)).astype(np.float32)
    request = ScoreRequest(adapter, candidates, texts, CHOICES, cue=CUE, scope="bench")
    scores = {name: engine.score(request).log_probs for name, engine in engines.items()}  # caches filled
    seen: dict[str, list[tuple[float, float, int]]] = {name: [] for name in engines}
    for _ in range(REPEATS):
        for name, engine in engines.items():
            square = matmul_flops(2048, 2048, 2048, dtype=engine.bundle.dtype, seconds=1.0)
            started = time.perf_counter()
            tokens = engine.score(request).tokens_processed
            seen[name].append((time.perf_counter() - started, square, tokens))
    rows = {}
    for name, runs in seen.items():
        head = 2 * engines[name].bundle.hidden_size * len(CHOICES) * POPSIZE * len(texts)
        flops = 2.0 * params * runs[0][2] + head
        rows[name] = {
            "seconds": statistics.median(run[0] for run in runs),
            "matmul_gflops": statistics.median(run[1] for run in runs) / 1e9,
            "matmul_ratio": statistics.median(flops / run[0] / run[1] for run in runs),
        }
    fp32 = rows["float32"]["seconds"]
    for name, row in rows.items():
        row["speedup"] = fp32 / row["seconds"]
        row["max_score_difference"] = float(np.abs(scores[name] - scores["float32"]).max())
        print(f"bf16 generation {name}: {row['speedup']:.2f}x float32, {row['matmul_ratio']:.0%} of its "
              f"matmul, scores within {row['max_score_difference']:.2g}", flush=True)  # fmt: skip
    return {"popsize": POPSIZE, "examples": len(texts), "runs": rows}


def _evaluate(engines: dict[str, ScoringEngine], adapter: str) -> dict[str, Any]:
    texts, labels = sst2_dev()
    dimension = engines["float32"].adapters[adapter].dimension
    rows: dict[str, Any] = {}
    scores: dict[tuple[str, str], np.ndarray] = {}
    for name, engine in engines.items():
        row: dict[str, Any] = {}
        vectors = {"none": np.zeros((1, 0), np.float32), adapter: np.zeros((1, dimension), np.float32)}
        for served, vector in vectors.items():
            started = time.perf_counter()
            scores[name, served] = score_all(engine, served, vector, texts)
            row[f"{served}_rows_per_s"] = len(texts) / (time.perf_counter() - started)
        row["zero_shot_accuracy"] = accuracy(predictions(scores[name, "none"]), labels)
        row["calibrated_accuracy"] = accuracy(predictions(calibrate(scores[name, "none"])), labels)
        rows[name] = row
    for name, row in rows.items():
        row["max_score_difference"] = max(
            float(np.abs(scores[name, served] - scores["float32", served]).max())
            for served in ("none", adapter)
        )
        row["predictions_agree"] = float(
            np.mean(predictions(scores[name, "none"]) == predictions(scores["float32", "none"]))
        )
        print(f"bf16 evaluate {name}: {row[f'{adapter}_rows_per_s']:.1f} rows/s under {adapter}, "
              f"zero-shot {row['zero_shot_accuracy']:.1%}", flush=True)  # fmt: skip
    return {"examples": len(texts), "runs": rows}


def _main_job(engines: dict[str, ScoringEngine], adapter: str, budget: int) -> dict[str, Any]:
    task, test = tweets_task(seed=0)
    runs = {}
    for name, engine in engines.items():
        row, _ = tune_once(engine, adapter, task, test, budget, POPSIZE, 0)
        runs[name] = row
        print(f"bf16 main job {name}: {row['tuning_seconds']:.0f} s, held-out "
              f"{row['held_out_accuracy']:.1%}", flush=True)  # fmt: skip
    for row in runs.values():
        row["speedup"] = runs["float32"]["tuning_seconds"] / row["tuning_seconds"]
    return {"budget": budget, "popsize": POPSIZE, "seed": 0, "held_out_examples": len(test), "runs": runs}
