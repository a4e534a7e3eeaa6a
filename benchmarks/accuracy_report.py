"""The accuracy benchmark's report: tables (mean ± std over seeds), choices made on dev, and plots.

Protocol: every choice (which budget of a method, which method of a family) is made on the dev
split (8 per class, never used for tuning, only for selecting the vector); the test split is read
for the configuration chosen that way. The full tables beside it show every budget for reference.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Run = dict[str, Any]
# A tuned run reported calibrated at prediction is "<method>-calibrated"; with the user's label prior added
# to its biased scores, "<method>-prior".
CALIBRATED = "-calibrated"
PRIOR = "-prior"
DERIVED = (CALIBRATED, PRIOR)
# The methods that make no tuning calls; "icl" runs once and reports its calibrated form beside it.
BASELINES = (
    "majority",
    "zero-shot",
    "zero-shot-calibrated",
    "zero-shot-calibrated" + PRIOR,
    "icl",
    "icl" + CALIBRATED,
)
REFERENCE = "bbt-cue-bias"  # "calls to reach": the best BBT method of the earlier benchmark, at 400 calls


def _family(method: str) -> str:
    """The method a row belongs to: itself, or the tuned method it is a derived report of."""
    if method in BASELINES:
        return method
    for suffix in DERIVED:
        if method.endswith(suffix):
            return method.removesuffix(suffix)
    return method


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def group(runs: Sequence[Run]) -> dict[tuple[str, str, int], list[Run]]:
    """Runs by (task, method, calls), in first-seen order."""
    groups: dict[tuple[str, str, int], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run["task"], run["method"], int(run["calls"]))].append(run)
    return groups


def _ordered(values: Sequence[str], preferred: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(values))
    return sorted(unique, key=lambda v: (preferred.index(v) if v in preferred else len(preferred), v))


def calls_per_minute(runs: Sequence[Run]) -> float | None:
    rates = [60.0 * run["calls"] / run["seconds"] for run in runs if run["calls"] and run["seconds"] > 0]
    return statistics.fmean(rates) if rates else None


def render(runs: Sequence[Run], *, tasks: Sequence[str], methods: Sequence[str]) -> str:
    seeds = sorted({int(run["seed"]) for run in runs})
    models = sorted({str(run.get("model", "?")) for run in runs})
    popsizes = sorted({int(run["popsize"]) for run in runs if "popsize" in run})
    bbt = sorted({(run["dimension"], run["prompt_length"]) for run in runs if "dimension" in run})
    white = sorted({run["prompt_length"] for run in runs if run["method"] == "white-box"})
    lines = [
        "# Accuracy per call",
        "",
        f"Model: {', '.join(models)}. Seeds: {', '.join(map(str, seeds))} (mean ± sample std over seeds). "
        f"16 shots and 8 dev examples per class, sampled per seed by the client's `Task`; "
        f"CMA-ES (methods ending -ngopt, -diagonalcma, -tbpsa: that nevergrad optimizer), CE loss"
        f"{f', popsize {popsizes[0]}' if len(popsizes) == 1 else ''}"
        + "".join(f"; BBT adapters: dimension {d}, {t} prompt vectors" for d, t in bbt)
        + ".",
        "",
        "- `calls` of the black-box methods: candidate evaluations on the train set (each one forward pass "
        "of the train set; the dev evaluation of one candidate per generation and all test scoring are not "
        "counted). The accuracy at a budget is that of the best-on-dev vector after that many calls of one "
        "run.",
        "- `calls` of `white-box`: optimizer steps, each one forward and backward pass over the whole train "
        f"set (gradient prompt tuning of {'/'.join(map(str, white)) or 't'} free soft-prompt vectors before "
        "the answer cue, the model frozen; Adam; the prompt with the best dev accuracy so far).",
        "- `zero-shot`, `zero-shot-calibrated` (mean-centred on the unlabelled test inputs) and `icl` (one "
        "demonstration per class from the seed's train shots) make no tuning calls.",
        "- `calls/min`: calls over the tuning wall time (dev evaluations included), mean over seeds.",
        "- Methods: `bbt` is the paper's prefix prompt; `bbt-suffix` puts the prompt after the text, before "
        "the answer cue; `bbt-cue` adds A·z onto the answer cue's embeddings (z = 0 is zero-shot). `-bias`: "
        "a per-choice bias fitted on the client together with z; `-devloss`: the vector picked by dev "
        "cross-entropy instead of dev accuracy; `-mean`: each generation offers CMA-ES's mean (injected as "
        "one of its samples) to the dev selection instead of its lowest-train-loss sample; `-r100`, `-r50`: "
        "z of 100 or 50 dimensions instead of 500; `-calibrated`: the same run's test log-probs "
        "mean-centred on the unlabelled test inputs (as in zero-shot-calibrated) instead of the fitted "
        "bias; `-prior`: the fitted bias, then the log of the user's own label prior (the class mix of the "
        "task's training file, computed on the client) added.",
        "- `cbp-opinion`: CBP-Tuning with the provider's opinion generator (trained on SST-2 train and "
        "tweets, never on a test text and never on Financial PhraseBank); `cbp-opinion-no-tweets`: the "
        "generator trained on SST-2 alone; `cbp-opinion-zmode-noise`, `-zero`, `-task`: the shipped recipe "
        "trained again with each `--z-mode` (noise is the shipped mode; see generators/README.md). Budget 0 "
        "is z = 0, i.e. z0: the domain prompt before any user call (with `-bias`, the bias fitted there on "
        "the train shots).",
        "- `majority`: always the test split's most frequent class.",
        "",
    ]
    lines += chosen_on_dev(runs, tasks)
    groups = group(runs)
    for task in _ordered([run["task"] for run in runs], tasks):
        task_runs = [run for run in runs if run["task"] == task]
        counts = task_runs[0].get("test_class_counts")
        size = f"{sum(counts)} test examples, per class {counts}" if counts else ""
        lines += [
            f"## {task}" + (f" ({size})" if size else ""),
            "",
            "| method | calls | accuracy | macro-F1 | calls/min | seeds |",
            "|---|---|---|---|---|---|",
        ]
        for method in _ordered([run["method"] for run in task_runs], methods):
            keys = sorted(key for key in groups if key[0] == task and key[1] == method)
            for key in keys:
                members = groups[key]
                accuracy = _mean_std([run["accuracy"] for run in members])
                f1 = _mean_std([run["macro_f1"] for run in members])
                rate = calls_per_minute(members)
                lines.append(
                    f"| {method} | {key[2]} | {100 * accuracy[0]:.1f} ± {100 * accuracy[1]:.1f} "
                    f"| {100 * f1[0]:.1f} ± {100 * f1[1]:.1f} | {'–' if rate is None else f'{rate:.1f}'} "
                    f"| {len(members)} |"
                )
        lines.append("")
    return "\n".join(lines)


def _dev(members: Sequence[Run]) -> float | None:
    values = [run["dev_accuracy"] for run in members if run.get("dev_accuracy") is not None]
    return statistics.fmean(values) if len(values) == len(members) and values else None


def _cell(members: Sequence[Run], key: str) -> str:
    mean, std = _mean_std([run[key] for run in members])
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def chosen_on_dev(runs: Sequence[Run], tasks: Sequence[str]) -> list[str]:
    """Per task and tuned method: the budget with the best mean dev accuracy (ties: fewer calls), its test
    figures, and the calls the method needs to reach the reference method's 400-call test accuracy."""
    groups = group(runs)
    lines = [
        "## Chosen on dev, reported on test",
        "",
        "For each tuned method (its `-calibrated`/`-prior` reports share its choice), the budget with the "
        "best mean dev accuracy over seeds; ties go to fewer calls. Only that budget's test figures are "
        f"read. 'reaches {REFERENCE}@400' is the fewest calls whose mean test accuracy is at least "
        f"{REFERENCE}'s at 400 calls (a test-split comparison, stated as such).",
        "",
    ]
    for task in _ordered([run["task"] for run in runs], tasks):
        keys = [key for key in groups if key[0] == task]
        reference = groups.get((task, REFERENCE, 400))
        target = statistics.fmean(run["accuracy"] for run in reference) if reference else None
        lines += [
            f"### {task}",
            "",
            "| method | chosen budget (dev acc.) | test accuracy | test macro-F1 | seeds | reaches "
            f"{REFERENCE}@400{'' if target is None else f' ({100 * target:.1f})'} |",
            "|---|---|---|---|---|---|",
        ]
        for method in _ordered([key[1] for key in keys], BASELINES):
            members = [groups[key] for key in sorted(k for k in keys if k[1] == method)]
            if method in BASELINES:
                lines.append(
                    f"| {method} | – | {_cell(members[0], 'accuracy')} | {_cell(members[0], 'macro_f1')} "
                    f"| {len(members[0])} | – |"
                )
                continue
            family = _family(method)
            scored = [
                (dev, -int(m[0]["calls"]), m)
                for m in ([groups[k] for k in sorted(k for k in keys if k[1] == family)])
                if (dev := _dev(m)) is not None
            ]
            if not scored:
                continue
            dev, negative_calls, _ = max(scored, key=lambda item: (item[0], item[1]))
            chosen = groups.get((task, method, -negative_calls))
            if chosen is None:
                continue
            reach = "–"
            if target is not None:
                budgets = [k[2] for k in sorted(keys) if k[1] == method]
                hits = [
                    b
                    for b in budgets
                    if statistics.fmean(r["accuracy"] for r in groups[(task, method, b)]) >= target
                ]
                reach = str(min(hits)) if hits else f"not within {max(budgets)}"
            lines.append(
                f"| {method} | {-negative_calls} ({100 * dev:.1f}) | {_cell(chosen, 'accuracy')} "
                f"| {_cell(chosen, 'macro_f1')} | {len(chosen)} | {reach} |"
            )
        lines.append("")
    return lines


def plot_families(
    runs: Sequence[Run], task: str, path: Path, prefixes: Sequence[str], exclude: Sequence[str] = ()
) -> Path:
    """Accuracy against calls of the methods whose names start with ``prefixes`` (e.g. bbt against cbp)
    and not with ``exclude``, their biased reports only, with calibrated zero-shot and the majority class
    as horizontal lines."""
    keep = [
        run
        for run in runs
        if run["task"] == task
        and (run["method"] in ("zero-shot-calibrated", "majority")
             or (run["method"].startswith(tuple(prefixes)) and not run["method"].startswith(tuple(exclude))
                 and _family(run["method"]) == run["method"]))
    ]  # fmt: skip
    methods = list(dict.fromkeys(run["method"] for run in keep))
    return plot(keep, task, path, methods)


def plot(runs: Sequence[Run], task: str, path: Path, methods: Sequence[str]) -> Path:
    """Accuracy against calls for one task: a line per tuned method, baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group([run for run in runs if run["task"] == task])
    figure, axes = plt.subplots(figsize=(7, 4.5))
    tab20 = plt.get_cmap("tab20").colors  # 10 dark then 10 light colours: enough for every method family
    palette = [*tab20[0::2], *tab20[1::2]]
    families = list(dict.fromkeys(_family(method) for method in methods))
    for method in _ordered([key[1] for key in groups], methods):
        keys = sorted(key for key in groups if key[1] == method)
        stats = [_mean_std([run["accuracy"] for run in groups[key]]) for key in keys]
        # A tuned method calibrated at prediction shares its method's colour, drawn dotted.
        family = _family(method)
        derived = family != method and family in families
        coloured_as = family if derived else method
        index = families.index(coloured_as) if coloured_as in families else len(families)
        colour = palette[index % len(palette)]
        if method in BASELINES or all(key[2] == 0 for key in keys):
            mean, std = stats[0]
            axes.axhline(100 * mean, color=colour, linestyle="--", label=f"{method} ({100 * mean:.1f})")
            if std > 0:
                axes.axhspan(100 * (mean - std), 100 * (mean + std), color=colour, alpha=0.1)
            continue
        calls = [key[2] for key in keys]
        means = [100 * s[0] for s in stats]
        stds = [100 * s[1] for s in stats]
        style = {"linestyle": ":", "marker": "s"} if derived else {"marker": "o"}
        axes.errorbar(calls, means, yerr=stds, color=colour, capsize=3, label=method, **style)
    seeds = sorted({int(run["seed"]) for run in runs if run["task"] == task})
    axes.set(
        xlabel="calls (white-box: optimizer steps)",
        ylabel="test accuracy (%)",
        title=f"{task}: mean ± std over seeds {', '.join(map(str, seeds))}",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
