"""Evaluate throughput of the scoring engine, as a ratio to a plain matmul timed in the same run.

    .venv/bin/python -m benchmarks.throughput          # every section on the bundled model (hours on 2 cores)
    .venv/bin/python -m benchmarks.throughput --quick  # fewer points and sizes (about an hour)
    .venv/bin/python -m benchmarks.throughput --sections evaluate,oncue,mainjob   # re-run some parts
    .venv/bin/python -m benchmarks.throughput --batching before-24 --output throughput-before-24
                                                        # every section on the engine as before #24

``compiled`` times one on-cue generation eager and through ``torch.compile`` (throughput_compiled.py).
The sections ``evaluate``, ``oncue``, ``ceiling`` and ``mainjob`` put the engine (and client) as they
were before issue #24 beside today's in one run (throughput_evaluate.py, main_job.py).

Writes benchmarks/results/throughput.json and throughput.md. FLOPs per sequence are
2 x non-embedding parameters x tokens processed, plus the LM-head rows actually computed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.harness import (
    RESULTS,
    layer_matmul_flops,
    machine,
    matmul_flops,
    non_embedding_parameters,
    score_all,
    sst2_dev,
    sst2_texts,
    time_call,
    write_json,
    write_text,
)
from benchmarks.main_job import compare_main_job
from benchmarks.throughput_bf16 import bf16_section
from benchmarks.throughput_compiled import compiled_section
from benchmarks.throughput_evaluate import ceiling_section, evaluate_section, oncue_section
from benchmarks.throughput_grpc import merged_clients, over_grpc
from benchmarks.throughput_report import render
from cbpt.common.losses import accuracy, calibrate, predictions
from cbpt.server.adapters.cbp import CustomizedBlackBoxPrompt
from cbpt.server.adapters.generator import GeneratorConfig, PromptGenerator
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoringEngine
from cbpt.server.engine.batching import Batching
from cbpt.server.model import ModelBundle, load_model
from cbpt.server.testing import tiny_bundle

BATCHING = {"now": Batching(), "before-24": Batching.before_issue_24()}
_base = BATCHING["now"]  # what ``build`` starts from (``--batching``)


def build(bundle: ModelBundle, **options) -> ScoringEngine:
    """The default adapters and a random ``cbp`` generator; ``options`` override batching knobs."""
    adapters = ServedAdapters(shipped_generators=False).build(bundle)
    config = GeneratorConfig(bundle.fingerprint, bundle.hidden_size, bundle.embedding_std, domain="bench")
    adapters.append(CustomizedBlackBoxPrompt(PromptGenerator(config), name="cbp"))
    return ScoringEngine(bundle, adapters, batching=_base, **options)


def in_bfloat16(model: str, bundle: ModelBundle) -> ModelBundle:
    """The same weights in bfloat16, as ``cbpt-server serve --dtype bfloat16`` loads them."""
    if model != "tiny":
        return load_model(model, dtype=torch.bfloat16, threads=torch.get_num_threads())
    halved = copy.deepcopy(bundle.model).to(torch.bfloat16)
    return dataclasses.replace(bundle, model=halved, model_id=f"{bundle.model_id}+bfloat16")


def layer_reference(bundle: ModelBundle, seconds: float = 0.5) -> float:
    """FLOP/s of the model's own layer matmuls on its device and dtype, timed now (see common.py)."""
    return layer_matmul_flops(
        bundle.model.config, dtype=bundle.dtype, device=str(bundle.device), seconds=seconds
    )


def grid(
    engine: ScoringEngine,
    lengths: dict[str, list[str]],
    quick: bool,
    params: int,
    square: float,
    reference_seconds: float = 0.5,
) -> list[dict]:
    """Each point is timed right after the layer-shaped matmul it is compared with, so drift cancels."""
    popsizes = (1, 10, 20) if quick else (1, 10, 20, 40)
    example_counts = (8, 32) if quick else (8, 16, 32)
    rows = []
    for adapter in ("bbt", "bbt-suffix", "bbt-cue", "cbp"):
        for length, texts in lengths.items():
            # Long inputs and the generator: the corners of the grid only, to keep the run near 20 minutes.
            corners = length == "long" or adapter == "cbp"
            for popsize in (popsizes[0], popsizes[-2]) if corners else popsizes:
                for examples in (example_counts[0], example_counts[-1]) if corners else example_counts:
                    layer = layer_reference(engine.bundle, reference_seconds)
                    t = time_call(engine, adapter, popsize, texts[:examples], params)
                    rows.append(
                        {
                            "adapter": adapter,
                            "length": length,
                            "popsize": popsize,
                            "examples": examples,
                            "seconds": t.seconds,
                            "candidate_evals_per_s": popsize / t.seconds,
                            "sequences_per_s": t.sequences / t.seconds,
                            "tokens_per_s": t.tokens / t.seconds,
                            "matmul_ratio": t.flops / t.seconds / square,
                            "layer_matmul_gflops": layer / 1e9,
                            "layer_matmul_ratio": t.flops / t.seconds / layer,
                        }
                    )
                    print(
                        f"{adapter:10s} {length:5s} pop {popsize:2d} x {examples:2d}: "
                        f"{rows[-1]['sequences_per_s']:6.1f} seq/s, "
                        f"{rows[-1]['matmul_ratio']:5.1%} of matmul 2048^3, "
                        f"{rows[-1]['layer_matmul_ratio']:5.1%} of the layer matmuls",
                        flush=True,
                    )
    return rows


def ablations(bundle: ModelBundle, texts: list[str], params: int, square: float) -> list[dict]:
    variants = [
        ("bbt, sorted passes, prompt reused per candidate (default)", "bbt", {}),
        ("bbt, prompt run with every example", "bbt", {"reuse_prefix_states": False}),
        ("bbt, unsorted", "bbt", {"sort_by_length": False}),
        ("bbt, passes of 16 rows", "bbt", {"batch_sequences": 16}),
        ("bbt, passes of 4096 tokens", "bbt", {"batch_tokens": 4096}),
        ("bbt, the engine before #24", "bbt", dataclasses.asdict(Batching.before_issue_24())),
        ("bbt-suffix, text states reused", "bbt-suffix", {}),
        ("bbt-suffix, no reuse", "bbt-suffix", {"reuse_text_states": False}),
        ("bbt-cue, text states reused (default)", "bbt-cue", {}),
        ("bbt-cue, one sequence per row (pack_rows 1)", "bbt-cue", {"pack_rows": 1}),
        ("bbt-cue, keys/values repeated per head", "bbt-cue", {"grouped_attention": False}),
        ("bbt-cue, passes of 4096 tokens", "bbt-cue", {"batch_tokens": 4096}),
        ("bbt-cue, the engine before #24", "bbt-cue", dataclasses.asdict(Batching.before_issue_24())),
        ("bbt-cue, no reuse", "bbt-cue", {"reuse_text_states": False}),
    ]
    results = []
    for label, adapter, options in variants:
        timing = time_call(build(bundle, **options), adapter, 20, texts, params)
        results.append(
            {
                "variant": label,
                "seq_per_s": timing.sequences / timing.seconds,
                "matmul_ratio": timing.flops / timing.seconds / square,
            }
        )
        print(f"ablation {label}: {results[-1]['seq_per_s']:.1f} seq/s", flush=True)
    return results


def pooled_inputs_cost(bundle: ModelBundle, texts: list[str], params: int) -> dict:
    """What a cache of tokenised, mean-pooled input embeddings could save per cbp call, beside the call.

    The engine computes them once per request (not per candidate), as in this measurement.
    """
    engine = build(bundle)
    repeats = 20
    started = time.perf_counter()
    with torch.inference_mode():
        for _ in range(repeats):
            engine.pooled_inputs(bundle.tokenizer(texts, add_special_tokens=False)["input_ids"])
    pooled = (time.perf_counter() - started) / repeats
    call = time_call(engine, "cbp", 20, texts, params).seconds
    print(f"pooled inputs: {pooled * 1e3:.2f} ms against a cbp call of {call:.2f} s", flush=True)
    return {"examples": len(texts), "popsize": 20, "pooled_seconds": pooled, "cbp_call_seconds": call,
            "share": pooled / call}  # fmt: skip


def thread_sweep(bundle: ModelBundle, texts: list[str], params: int, square: float) -> list[dict]:
    """torch intra-op threads from 1 to the core count, for the prefix and the after-text placements."""
    results = []
    engine = build(bundle)
    default = torch.get_num_threads()
    counts = sorted({1, max(1, default // 2), default, (os.cpu_count() or 1)})
    try:
        for threads in counts:
            torch.set_num_threads(threads)
            for adapter in ("bbt", "bbt-suffix"):
                timing = time_call(engine, adapter, 20, texts, params)
                results.append(
                    {
                        "threads": threads,
                        "adapter": adapter,
                        "seq_per_s": timing.sequences / timing.seconds,
                        "matmul_ratio": timing.flops / timing.seconds / square,
                    }
                )
                print(f"threads {threads} {adapter}: {results[-1]['seq_per_s']:.1f} seq/s", flush=True)
    finally:
        torch.set_num_threads(default)
    return results


def int8_cost(model: str, bundle: ModelBundle, texts: list[str], params: int, square: float) -> dict:
    """Opt-in dynamic int8: speed side by side with fp32, and zero-shot accuracy on the whole SST-2 dev
    set."""
    quantized = load_model(model, quantize="int8")
    dev_texts, labels = sst2_dev()
    result: dict = {"dev_examples": len(dev_texts)}
    for name, model_bundle in (("fp32", bundle), ("int8", quantized)):
        engine = build(model_bundle)
        speeds = {}
        for adapter in ("bbt", "bbt-suffix"):
            timing = time_call(engine, adapter, 20, texts, params)
            speeds[adapter] = timing.sequences / timing.seconds
        log_probs = score_all(engine, "none", np.zeros((1, 0), np.float32), dev_texts)
        result[name] = {
            "seq_per_s": speeds,
            "zero_shot_accuracy": accuracy(predictions(log_probs), labels),
            "calibrated_accuracy": accuracy(predictions(calibrate(log_probs)), labels),
        }
        print(f"{name}: {speeds}, zero-shot {result[name]['zero_shot_accuracy']:.1%}", flush=True)
    return result


SECTIONS = (
    "grid", "ablations", "pooled", "threads", "int8", "merging", "grpc", "evaluate", "oncue", "ceiling",
    "compiled", "mainjob", "bf16",
)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    parser.add_argument(
        "--model", default="smollm2", help="'smollm2', 'tiny' (plumbing only) or a HF id/folder"
    )
    parser.add_argument("--output", default="throughput")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: one per core); 1 where other work holds a core"
    )
    parser.add_argument(
        "--reference-seconds",
        type=float,
        default=0.5,
        help="timing of each grid point's layer matmul reference",
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--batching", choices=sorted(BATCHING), default="now",
        help="the engine the single-engine sections run: today's, or as before issue #24",
    )  # fmt: skip
    parser.add_argument(
        "--evaluate-rows", help="comma-separated file sizes of the evaluate section (default 1,300 with "
        "--quick, else 1,1000,10000; sizes over 1000 run short texts through gRPC only)",
    )  # fmt: skip
    parser.add_argument(
        "--evaluate-lengths",
        default="short,long",
        help="comma-separated text lengths of the evaluate section",
    )
    args = parser.parse_args(argv)
    default_rows = "1,300" if args.quick else "1,1000,10000"
    rows = tuple(int(size) for size in (args.evaluate_rows or default_rows).split(","))
    global _base
    _base = BATCHING[args.batching]
    sections = [name for name in args.sections.split(",") if name]
    if unknown := sorted(set(sections) - set(SECTIONS)):
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")

    bundle = tiny_bundle(0) if args.model == "tiny" else load_model(args.model, threads=args.threads)
    params = non_embedding_parameters(bundle)
    square = matmul_flops(
        2048, 2048, 2048, dtype=bundle.dtype, device=str(bundle.device), seconds=4 * args.reference_seconds
    )
    print(f"matmul 2048^3: {square / 1e9:.1f} GFLOP/s ({bundle.dtype}, {bundle.device})", flush=True)
    short = [f"Review: {t}" for t in sst2_texts(64, seed=0)]
    lengths = {"short": short}
    if not args.quick:
        lengths["long"] = [f"Review: {' '.join(sst2_texts(3, seed=i))}" for i in range(64)]

    # Sections re-run on their own replace only their part of an earlier result (same machine, same day).
    path = RESULTS / f"{args.output}.json"
    payload = json.loads(path.read_text()) if path.is_file() else {}
    payload |= {"machine": machine(), "model": bundle.model_id, "dtype": str(bundle.dtype),
                "non_embedding_parameters": params, "batching": args.batching}  # fmt: skip
    runs: dict[str, Callable[[], object]] = {
        "grid": lambda: grid(build(bundle), lengths, args.quick, params, square, args.reference_seconds),
        "ablations": lambda: ablations(bundle, short[:32], params, square),
        "pooled": lambda: pooled_inputs_cost(bundle, short[:32], params),
        "threads": lambda: thread_sweep(bundle, short[:32], params, square),
        "int8": lambda: int8_cost(args.model, bundle, short[:32], params, square),
        "merging": lambda: merged_clients(lambda: build(bundle), short[:8]),
        "grpc": lambda: [
            over_grpc(build(bundle), short[:16], a, 6 if args.quick else 15)
            for a in ("bbt-suffix", "bbt-cue")
        ],
        "evaluate": lambda: evaluate_section(bundle, params, rows, tuple(args.evaluate_lengths.split(","))),
        "oncue": lambda: oncue_section(bundle, params, args.quick),
        "ceiling": lambda: ceiling_section(bundle, params),
        "compiled": lambda: compiled_section(bundle, params),
        "mainjob": lambda: compare_main_job(bundle, 60 if args.quick else 200),
        "bf16": lambda: bf16_section(
            bundle, in_bfloat16(args.model, bundle), params, 60 if args.quick else 200
        ),
    }
    for name in SECTIONS:
        if name not in sections or (name == "int8" and args.model == "tiny"):
            continue
        load = os.getloadavg()[0]
        payload[name] = runs[name]()
        payload.setdefault("matmul_gflops", {})[name] = square / 1e9  # the reference of that section's run
        payload.setdefault("load", {})[name] = [
            load,
            os.getloadavg()[0],
        ]  # uptime's 1-minute load, before/after
        write_json(f"{args.output}.json", payload)  # after every section: a later failure loses nothing
        write_text(f"{args.output}.md", render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
