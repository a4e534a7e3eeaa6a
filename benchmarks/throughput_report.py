"""The throughput benchmark's report: benchmarks/results/throughput.md from its JSON payload.

It states what was measured, ratios beside their references; it draws no verdict the numbers
do not carry (whether a cache pays is for the reader of the share to judge).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable


def _spread(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if key in r]
    if not values:
        return "–"
    return f"median {statistics.median(values):.0%} ({min(values):.0%}–{max(values):.0%})"


def render(payload: dict) -> str:
    lines = [
        f"# Evaluate throughput ({payload['model']}, {payload['machine']['device']}, "
        f"{payload['machine']['cores']} cores)",
        "",
        f"Two references, both in the model's dtype ({payload.get('dtype', 'torch.float32')}) and timed in "
        "the same run: a 2048x2048x2048 matmul at the start of the run that measured each section "
        f"({', '.join(f'{k}: {v:.0f} GFLOP/s' for k, v in payload['matmul_gflops'].items())}), and the "
        "model's own layer matmuls (q, k, v, o, gate, up, down on 2048 tokens: the forward pass's GEMM "
        "shapes), timed just before each grid point. FLOPs = 2 x non-embedding parameters x tokens run + "
        "the LM-head rows computed; adapters placed after the text count only the tokens they actually run "
        "(each text is encoded once and reused).",
        "",
        "| adapter | input | popsize | examples | candidate evals/s | sequences/s | tokens/s "
        "| FLOP/s vs matmul 2048³ | vs layer matmuls |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload.get("grid", []):
        layer = f"{r['layer_matmul_ratio']:.0%}" if "layer_matmul_ratio" in r else "–"
        lines.append(
            f"| {r['adapter']} | {r['length']} | {r['popsize']} | {r['examples']} "
            f"| {r['candidate_evals_per_s']:.2f} | {r['sequences_per_s']:.1f} | {r['tokens_per_s']:.0f} "
            f"| {r['matmul_ratio']:.0%} | {layer} |"
        )
    lines += [
        "",
        "## Ablations (bbt unless named, popsize 20 x 32 short examples)",
        "",
        "| variant | sequences/s | FLOP/s vs matmul |",
        "|---|---|---|",
    ]
    for a in payload.get("ablations", []):
        lines.append(f"| {a['variant']} | {a['seq_per_s']:.1f} | {a['matmul_ratio']:.0%} |")
    if pooled := payload.get("pooled"):
        lines += [
            "",
            f"Tokenising and mean-pooling {pooled['examples']} inputs (what a cache of pooled embeddings "
            f"would save per call): {pooled['pooled_seconds'] * 1e3:.1f} ms, {pooled['share']:.2%} of a cbp "
            f"call at popsize {pooled['popsize']} ({pooled['cbp_call_seconds']:.2f} s).",
        ]
    if threads := payload.get("threads"):
        lines += [
            "",
            "## torch threads (popsize 20 x 32 short examples)",
            "",
            "| threads | adapter | sequences/s | FLOP/s vs matmul |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {t['threads']} | {t['adapter']} | {t['seq_per_s']:.1f} | {t['matmul_ratio']:.0%} |"
            for t in threads
        ]
    if int8 := payload.get("int8"):
        lines += [
            "",
            "## Opt-in int8 dynamic quantisation (`--quantize int8`): speed at popsize 20 x 32, zero-shot on "
            f"all {int8['dev_examples']} SST-2 dev examples",
            "",
            "| weights | bbt sequences/s | bbt-suffix sequences/s | zero-shot | calibrated |",
            "|---|---|---|---|---|",
        ]
        for name in ("fp32", "int8"):
            r = int8[name]
            lines.append(
                f"| {name} | {r['seq_per_s']['bbt']:.1f} | {r['seq_per_s']['bbt-suffix']:.1f} "
                f"| {r['zero_shot_accuracy']:.1%} | {r['calibrated_accuracy']:.1%} |"
            )
    if merging := payload.get("merging"):
        m = merging[0]
        lines += [
            "",
            f"## Dynamic batching: {m['clients']} clients at once, each sending popsize {m['popsize']} "
            f"x {m['examples']} examples (bbt)",
            "",
            "| server | sequences/s, all clients |",
            "|---|---|",
        ]
        lines += [f"| {r['variant']} | {r['seq_per_s']:.1f} |" for r in merging]
    lines += [
        "",
        "## Through gRPC on loopback (CMA-ES, r=500, popsize 20, 16 examples, bias fitted on the client)",
        "",
        "| adapter | client overhead (ask/tell/loss + serialisation/transport) | of which ask/tell/loss "
        "| bytes sent / received per candidate evaluation | call p50 / p99 |",
        "|---|---|---|---|---|",
    ]
    for w in payload.get("grpc", []):
        lines.append(
            f"| {w['adapter']} | {w['client_overhead_share']:.1%} | {w['ask_tell_loss_share']:.1%} "
            f"| {w['bytes_sent_per_candidate_evaluation']:.0f} "
            f"/ {w['bytes_received_per_candidate_evaluation']:.0f} "
            f"| {w['call_seconds_p50']:.2f} s / {w['call_seconds_p99']:.2f} s |"
        )
    lines += _before_and_now(payload)
    lines.append("")
    for adapter in ("bbt", "cbp"):
        big = [
            r
            for r in payload.get("grid", [])
            if r["popsize"] * r["examples"] >= 160 and r["adapter"] == adapter
        ]
        if big:
            lines.append(f"{adapter} at popsize x examples >= 160 ({len(big)} points): "
                         f"{_spread(big, 'matmul_ratio')} of the 2048³ matmul; "
                         f"{_spread(big, 'layer_matmul_ratio')} of the layer matmuls.  ")  # fmt: skip
    return "\n".join(lines) + "\n"


def _pairs(rows: list[dict], keys: tuple[str, ...]) -> list[tuple[dict, dict]]:
    """(before #24, now) rows measured for the same point, in the order measured."""
    before = {tuple(r[k] for k in keys): r for r in rows if r["engine"] == "before #24"}
    return [(before[tuple(r[k] for k in keys)], r) for r in rows if r["engine"] == "now"]


def _before_and_now(payload: dict) -> list[str]:
    """The issue #24 sections: each point before #24 and now, measured interleaved in one run."""
    lines: list[str] = []
    load = payload.get("load", {})

    def heading(section: str, title: str) -> None:
        seen = load.get(section)
        note = f" (1-minute load {seen[0]:.1f} before, {seen[1]:.1f} after)" if seen else ""
        lines.extend(["", f"## {title}{note}", ""])

    if evaluate := payload.get("evaluate"):
        heading("evaluate", "evaluate / predict: one vector over a file, before #24 and now")
        lines += [
            "Each run starts with an empty text-state cache; gRPC is `predict_in_batches` (shuffled rows), "
            "CLI is `cbpt predict TUNED FILE` (the tuned adapter) or `cbpt evaluate --zero-shot` (`none`), "
            "in this process against a loopback server. FLOP/s count the tokens the server ran (texts and "
            "cues).",
            "",
            "| path | adapter | texts | rows | rows/s before | rows/s now | speed-up | of matmul before "
            "| of matmul now |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for old, new in _pairs(evaluate, ("path", "adapter", "length", "rows")):
            lines.append(
                f"| {new['path']} | {new['adapter']} | {new['length']} | {new['rows']} "
                f"| {old['rows_per_s']:.1f} | {new['rows_per_s']:.1f} "
                f"| {new['rows_per_s'] / old['rows_per_s']:.2f}x "
                f"| {old['matmul_ratio']:.0%} | {new['matmul_ratio']:.0%} |"
            )
    if oncue := payload.get("oncue"):
        heading("oncue", "One generation on the answer cue (32 short texts, cached as from generation 2)")
        lines += [
            "| adapter | popsize | sequences/s before | sequences/s now | speed-up | of matmul before "
            "| of matmul now |",
            "|---|---|---|---|---|---|---|",
        ]
        for old, new in _pairs(oncue, ("adapter", "popsize")):
            lines.append(
                f"| {new['adapter']} | {new['popsize']} | {old['sequences_per_s']:.1f} "
                f"| {new['sequences_per_s']:.1f} | {new['sequences_per_s'] / old['sequences_per_s']:.2f}x "
                f"| {old['matmul_ratio']:.0%} | {new['matmul_ratio']:.0%} |"
            )
    if ceiling := payload.get("ceiling"):
        heading("ceiling", "Ceiling: the model's own plain forward (no padding, cache or mask)")
        lines += ["| sequences x tokens | of matmul |", "|---|---|"]
        lines += [f"| {r['sequences']} x {r['length']} | {r['matmul_ratio']:.0%} |" for r in ceiling]
    if compiled := payload.get("compiled"):
        first = compiled[0]
        heading("compiled", f"One on-cue generation ({first['adapter']}, popsize {first['popsize']} x "
                f"{first['examples']} cached texts), eager and through torch.compile (inductor)")  # fmt: skip
        lines += [
            "| model | speed-up over eager | of matmul | largest score difference from eager |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['variant']} | {r['speedup']:.2f}x | {r['matmul_ratio']:.0%} "
            f"| {r['max_score_difference']:.1e} |"
            for r in compiled
        ]
    if job := payload.get("mainjob"):
        heading("mainjob", f"The main job's tuning ({job['runs'][0]['adapter']}, {job['budget']} calls, "
                f"popsize {job['popsize']}, seed {job['seed']}), before #24 and now")  # fmt: skip
        first = job["runs"][0]["tuning_seconds"]
        lines += [
            "| engine | tuning time | speed-up | tokens run | of matmul | train loss | held-out accuracy |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['configuration']} | {r['tuning_seconds']:.0f} s | {first / r['tuning_seconds']:.2f}x "
            f"| {r['tokens']} | {r['matmul_ratio']:.0%} | {r['train_loss']:.4f} "
            f"| {r['held_out_accuracy']:.1%} |"
            for r in job["runs"]
        ]
        same = "identical" if job["same_vector"] else f"differ by at most {job['vector_max_difference']:.2g}"
        lines += ["", f"The two tuned vectors are {same}."]
    if halved := payload.get("bf16"):
        heading("bf16", "bfloat16 on CPU (`--dtype bfloat16`, opt-in) beside float32, one run")
        lines += _bf16(halved)
    return lines


def _bf16(section: dict) -> list[str]:
    """The bf16 section's three tables: one generation, evaluate, the main job."""
    adapter = section["adapter"]
    native = {True: "yes", False: "no", None: "unknown"}[section["native_bf16"]]
    generation, evaluate, job = section["generation"], section["evaluate"], section["main_job"]
    return [
        f"CPU multiplies bf16 in hardware (AMX or AVX512-BF16): {native}. Each dtype's matmul ratio is to a "
        "2048³ matmul in that dtype timed just before.",
        *_dtype_table(
            f"one generation ({adapter}, popsize {generation['popsize']} x {generation['examples']}) "
            "| speed-up | of its matmul | its matmul | largest score difference from float32",
            generation["runs"],
            lambda r: (
                f"{r['seconds']:.2f} s | {r['speedup']:.2f}x | {r['matmul_ratio']:.0%} "
                f"| {r['matmul_gflops']:.0f} GFLOP/s | {r['max_score_difference']:.2g}"
            ),
        ),
        *_dtype_table(
            f"evaluate {evaluate['examples']} SST-2 dev rows under {adapter}, rows/s | zero-shot rows/s "
            "| zero-shot accuracy | calibrated | zero-shot predictions as float32's "
            "| largest score difference",
            evaluate["runs"],
            lambda r: (
                f"{r[f'{adapter}_rows_per_s']:.1f} | {r['none_rows_per_s']:.1f} "
                f"| {r['zero_shot_accuracy']:.1%} | {r['calibrated_accuracy']:.1%} "
                f"| {r['predictions_agree']:.1%} "
                f"| {r['max_score_difference']:.2g}"
            ),
        ),
        *_dtype_table(
            f"main job ({job['budget']} calls, popsize {job['popsize']}, seed {job['seed']}) tuning time "
            f"| speed-up | train loss | held-out accuracy ({job['held_out_examples']} tweets)",
            job["runs"],
            lambda r: (
                f"{r['tuning_seconds']:.0f} s | {r['speedup']:.2f}x | {r['train_loss']:.4f} "
                f"| {r['held_out_accuracy']:.1%}"
            ),
        ),
    ]


def _dtype_table(columns: str, runs: dict[str, dict], cells: Callable[[dict], str]) -> list[str]:
    """A table of one row per dtype: ``columns`` and ``cells`` give all but the first column."""
    width = columns.count("|") + 2
    return [
        "",
        f"| dtype | {columns} |",
        "|" + "---|" * width,
        *(f"| {n} | {cells(r)} |" for n, r in runs.items()),
    ]
