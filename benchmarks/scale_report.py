"""The Markdown report of benchmarks/scale.py: tables of what was measured, ratios side by side."""

from __future__ import annotations

from typing import Any

BASELINE = "in-process"


def render(payload: dict[str, Any]) -> str:
    settings, where = payload["settings"], payload["machine"]
    lines = [
        "# Scale-out on Ray Serve",
        "",
        f"Model `{payload['model']}` on {where['cores']} cores ({where['cpu']}, torch {where['torch']},"
        f" {where['device']}); {payload['total_seconds']:.0f} s in all. Every ratio below is measured side by"
        " side in this one run. This machine has 2 cores shared with other work: replicas here compete for"
        " the same cores as the front and each other, so the Ray rows show the hop's overhead, not a"
        " speed-up; on a cluster each replica brings its own cores (or GPU).",
        "",
    ]
    if payload.get("note"):
        lines += [f"**Reliability.** {payload['note']}", ""]
    if "clients" in payload:
        lines += _clients(payload["clients"], settings)
    if "mixing" in payload:
        lines += _mixing(payload["mixing"], settings)
    return "\n".join(lines) + "\n"


def _clients(section: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    rows = section["rows"]
    baseline = {row["clients"]: row for row in rows if row["backend"] == BASELINE}
    lines = [
        "## Concurrent tuning clients",
        "",
        f"Each client sends {settings['generations']} timed calls of {settings['popsize']} candidates x"
        f" {settings['examples']} texts of its own (`bbt-cue`, r = {settings['dimension']}), the next after"
        " the answer, through the gRPC front; its first call (text encoding) is not timed. p99 is over"
        " clients x calls samples, so at 1-2 clients it is the slowest call.",
        "",
        "| backend | clients | sequences/s | vs in-process | p50 ms | p99 ms | requests per engine call |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = row["sequences_per_second"] / baseline[row["clients"]]["sequences_per_second"]
        merged = row.get("requests_per_engine_call")
        lines.append(
            f"| {row['backend']} | {row['clients']} | {row['sequences_per_second']:.1f} | {ratio:.2f}x"
            f" | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {'' if merged is None else f'{merged:.2f}'} |"
        )
    one = {row["backend"]: row for row in rows if row["clients"] == min(baseline)}
    lines += ["", "The Ray hop, per request:", ""]
    for name, hop in section["hop_ms"].items():
        added = one[name]["p50_ms"] - one[BASELINE]["p50_ms"] if name in one else float("nan")
        lines.append(
            f"- {name}: {hop:.1f} ms to carry a generation-sized request to a replica and back (no scoring);"
            f" {added:+.0f} ms on the p50 of one client against in-process."
        )
    return [*lines, ""]


def _mixing(section: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    ms = section["ms_per_sequence"]
    tenants = section["tenants"]
    within = section["mixed_over_single"] <= 1.05
    latency = section["tenant_latency_ms"]
    pair = section.get("mixed_adapters", ["bbt-cue", "bbt-suffix"])
    adapters_note = (
        "Adapters with one placement and prompt length share forward passes (each row takes its own"
        " adapter's prompt), so the two-adapter mix runs as one pass."
        if section.get("adapters_share_passes")
        else "Adapters placed differently do not share a forward pass: mixed, they run one pass per adapter"
        " in the same call."
    )
    return [
        "## Tenants mixed in one forward pass",
        "",
        f"{tenants} tenants, each with its own vectors ({settings['popsize']} candidates), its own"
        f" {settings['examples']} texts and its own key scope, in one `ScoringEngine.score_many` call;"
        f" against one tenant's pass of the same size ({section['sequences']} sequences: the same texts,"
        " one key) and the same requests one tenant at a time. Text states warm, as in steady tuning;"
        f" medians of {settings['repeats']} interleaved repeats.",
        "",
        "| arm | ms per sequence | vs one tenant, same size |",
        "|---|---|---|",
        f"| one tenant, same size | {ms['single']:.3f} | 1.00x |",
        f"| {tenants} tenants mixed (`bbt-cue`) | {ms['mixed']:.3f} | {section['mixed_over_single']:.3f}x |",
        f"| the same requests one at a time | {ms['one_at_a_time']:.3f} |"
        f" {ms['one_at_a_time'] / ms['single']:.3f}x |",
        f"| tenants on {' and '.join(f'`{name}`' for name in pair)} mixed | {ms['mixed_adapters']:.3f} |"
        f" {ms['mixed_adapters'] / ms['single']:.3f}x |",
        "",
        f"Mixing costs {100 * (section['mixed_over_single'] - 1):+.1f}% per sequence against one tenant's"
        f" pass of the same size: {'within' if within else 'outside'} the 5% target. One at a time takes"
        f" {section['one_at_a_time_over_mixed']:.2f}x as long as mixed. {adapters_note}",
        "",
        "Each tenant's latency (ms): mixed, every tenant gets its answer when the one pass ends; one at a"
        " time, tenant k waits for the k before it.",
        "",
        "| tenant | " + " | ".join(str(i + 1) for i in range(tenants)) + " |",
        "|---|" + "---|" * tenants,
        "| mixed | " + " | ".join(f"{v:.0f}" for v in latency["mixed"]) + " |",
        "| one at a time | " + " | ".join(f"{v:.0f}" for v in latency["one_at_a_time"]) + " |",
        "",
    ]
