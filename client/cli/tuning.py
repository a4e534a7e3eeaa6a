"""``cbpt tune``: one ``TunerSettings`` from the flags, one run (or a sweep over seeds) with a summary.

The tuner's settings become options here from ``TunerSettings`` itself (names, types, defaults
and help: ``cbpt.common.cli``), and the resume command is read back from the same settings object
(``tune_session``), so a new setting cannot be forgotten in either place. ``--seed`` seeds both
the sample of shots and the optimizer (``--shots-seed`` and ``--optimizer-seed`` set each);
``--seeds 0,1,2`` runs one folder per seed and reports dev mean ± std.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cbpt.client.cli.app import JsonOutput, friendly_errors, print_json
from cbpt.client.cli.connection import Connection, connection_options
from cbpt.client.cli.keys import KeySource, key_options
from cbpt.client.cli.tune_session import RunRequest, check_folder, resume_command, run_in_folder
from cbpt.client.errors import ConfigError
from cbpt.client.tuning.auto import AutoChoice
from cbpt.client.tuning.results import TuningResult
from cbpt.client.tuning.settings import TunerSettings
from cbpt.common.cli import flag, settings_options
from cbpt.common.tasks.task import Task

Seed = Annotated[int | None, typer.Option(help="Seed of both the shots sample and the optimizer.")]
ShotsSeed = Annotated[
    int | None,
    typer.Option("--shots-seed", help="Seed of the shots and dev sample [default: the task's seed]."),
]
OptimizerSeed = Annotated[
    int | None, typer.Option("--optimizer-seed", help="Seed of the optimizer [default: 0].")
]
Seeds = Annotated[
    str | None,
    typer.Option(
        help="Sweep: comma-separated seeds (e.g. 0,1,2), one run each in OUT/seed-N; dev mean ± std."
    ),
]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers such as 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs distinct seeds such as 0,1,2, got {text!r}")
    return seeds


def summary_document(
    request: RunRequest, result: TuningResult, notes: list[str], auto: AutoChoice | None = None
) -> dict[str, Any]:
    """The ``cbpt tune --json`` shape for one run (a sweep lists these under ``runs``); ``auto`` is null
    unless ``--adapter auto`` chose the adapter (then: the one chosen and every candidate's dev figures)."""
    return {
        "task": request.task.name,
        "out": str(request.out),
        "model_id": result.model_id,
        "adapter": result.adapter,
        "optimizer": result.optimizer,
        "shots_seed": request.task.seed,
        "optimizer_seed": request.settings.seed,
        "budget": request.settings.budget,
        "calls_used": result.calls_used,
        "stop_reason": result.stop_reason,
        "dev_metrics": result.dev_metrics,
        "train_loss": result.train_loss,
        "notes": notes,
        "auto": None if auto is None else auto.to_json(),
    }


def _spread(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (as the benchmarks report them)."""
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else None,
        "values": values,
    }


# The docstring is the one-line help in ``cbpt --help``'s command list, which keeps any line break:
# a backslash continues its one line.
@friendly_errors
@connection_options()
@key_options
@settings_options("settings", TunerSettings, TunerSettings, exclude=("seed",))  # --seed sets it and the shots
def tune(
    task_file: Annotated[Path, typer.Argument(metavar="TASK", help="Task file (.yaml, .toml or .json).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the tuned task and its checkpoint.")],
    settings: TunerSettings,
    seed: Seed = None,
    shots_seed: ShotsSeed = None,
    optimizer_seed: OptimizerSeed = None,
    seeds: Seeds = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out (also to a larger --budget).")
    ] = False,
    encrypt_vector: Annotated[
        bool, typer.Option(flag("encrypt_vector"), help="Seal vector.safetensors.")
    ] = False,
    as_json: JsonOutput = False,
    *,
    keys: KeySource,
    connection: Connection,
) -> None:
    """Tune a vector for TASK; Ctrl-C, SIGTERM or a lost server keep the checkpoint and print how to \
resume."""
    task = Task.from_file(task_file)
    base = RunRequest(task_file, task, out, settings, encrypt_vector, keys, connection)
    if seeds is not None:
        if (seed, shots_seed, optimizer_seed) != (None, None, None):
            raise ConfigError("--seeds sets every seed; leave out --seed, --shots-seed and --optimizer-seed")
        _sweep(base, parse_seeds(seeds), seeds, resume=resume, as_json=as_json)
        return
    shots = shots_seed if shots_seed is not None else seed if seed is not None else task.seed
    chosen = optimizer_seed if optimizer_seed is not None else seed if seed is not None else 0
    request = replace(base, task=task.with_seed(shots), settings=settings.replace(seed=chosen))
    request.task.load()  # data errors surface here, as one line, before any connection or progress bar
    check_folder(request, resume)
    result, notes, auto = run_in_folder(request, resume=resume, quiet=as_json)
    if as_json:
        print_json(summary_document(request, result, notes, auto))
        return
    summary = Table(title=f"tuned {request.task.name} on {result.model_id}", show_header=False)
    dev = result.dev_metrics or {}
    for name, value in (
        ("dev accuracy", f"{dev['accuracy']:.4f}" if dev else "n/a (no dev split)"),
        ("dev macro-F1", f"{dev['macro_f1']:.4f}" if dev else "n/a"),
        *([("adapter", f"{result.adapter} (chosen by --adapter auto)")] if auto else []),
        ("train loss", f"{result.train_loss:.4f}"),
        ("calls used", f"{result.calls_used} of {request.settings.budget}"),
        ("stopped by", result.stop_reason),
        ("seeds", f"shots {request.task.seed}, optimizer {request.settings.seed}"),
        ("saved to", str(out)),
    ):
        summary.add_row(name, value)
    Console().print(summary)
    for note in notes:
        Console(stderr=True).print(f"note: {note}")


def _sweep(base: RunRequest, seeds: list[int], spelled: str, *, resume: bool, as_json: bool) -> None:
    """One run per seed (shots and optimizer both seeded), in OUT/seed-N; with --resume each
    seed's run continues if it has a checkpoint and starts otherwise."""
    requests = [
        replace(
            base,
            task=base.task.with_seed(s),
            out=base.out / f"seed-{s}",
            settings=base.settings.replace(seed=s),
        )
        for s in seeds
    ]
    for request in requests:
        request.task.load()  # every seed's sample is checked before the first run starts
        if not resume:
            check_folder(request, resume=False)
    sweep_hint = resume_command(replace(requests[0], out=base.out), sweep=spelled)
    finished = []
    for request in requests:
        again = resume and request.checkpoint.exists()
        result, notes, auto = run_in_folder(request, resume=again, quiet=as_json, resume_hint=sweep_hint)
        finished.append(summary_document(request, result, notes, auto))
    accuracy = [run["dev_metrics"]["accuracy"] for run in finished if run["dev_metrics"]]
    macro_f1 = [run["dev_metrics"]["macro_f1"] for run in finished if run["dev_metrics"]]
    if as_json:
        print_json(
            {
                "task": base.task.name,
                "out": str(base.out),
                "seeds": seeds,
                "runs": finished,
                "dev_accuracy": _spread(accuracy),
                "dev_macro_f1": _spread(macro_f1),
            }
        )
        return
    table = Table(
        "seed",
        "dev accuracy",
        "dev macro-F1",
        "train loss",
        "calls",
        "folder",
        title=f"sweep {base.task.name}",
    )
    for s, run in zip(seeds, finished, strict=True):
        dev = run["dev_metrics"] or {}
        table.add_row(
            str(s),
            f"{dev['accuracy']:.4f}" if dev else "n/a",
            f"{dev['macro_f1']:.4f}" if dev else "n/a",
            f"{run['train_loss']:.4f}",
            str(run["calls_used"]),
            run["out"],
        )
    console = Console()
    console.print(table)
    if accuracy:
        spread = _spread(accuracy)
        console.print(
            f"dev accuracy over seeds {spelled}: {spread['mean']:.4f} ± {spread['std']:.4f} "
            "(mean ± sample std)"
        )
