"""``cbpt tune``: one ``TunerSettings`` from the flags, a run with a progress bar, Ctrl-C that can be resumed.

The tuner's settings become options here from ``TunerSettings`` itself (this module adds
only their help), and the resume command printed after Ctrl-C is read back from the same
settings object, so a new setting cannot be forgotten in either place.
"""

from __future__ import annotations

import inspect
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Annotated, get_type_hints

import typer
from rich.console import Console
from rich.table import Table

from cbpt.client.artifacts import save_tuned
from cbpt.client.cli.app import EXIT_INTERRUPTED, friendly_errors
from cbpt.client.cli.connection import Connection, connection_options
from cbpt.client.cli.keys import KeySource, key_options
from cbpt.client.cli.options import flag, option_group
from cbpt.client.errors import CheckpointError
from cbpt.client.settings import TunerSettings
from cbpt.client.task import Task

CHECKPOINT_FILE = "checkpoint.cbpt"

# The help of each setting's option; the names, types and defaults are TunerSettings' own.
_SETTING_OPTIONS = {
    "adapter": typer.Option(help="Server adapter to tune (see `cbpt info`)."),
    "optimizer": typer.Option(help="cma, or ng:<name> for any nevergrad optimizer."),
    "budget": typer.Option(help="Candidate evaluations on the train set."),
    "popsize": typer.Option(help="Candidates per generation (one request)."),
    "sigma0": typer.Option(help="Initial step size."),
    "loss": typer.Option(help="ce, hinge or error."),
    "fit_bias": typer.Option(flag("fit_bias"), help="Fit a per-choice bias on the client."),
    "select_on": typer.Option(help="Pick the vector by dev 'accuracy' or dev cross-entropy ('loss')."),
    "select_from": typer.Option(
        help="What each generation offers to the dev selection: its lowest-train-loss 'best' candidate, "
        "or CMA-ES's 'mean' (cma only)."
    ),
    "dev_every": typer.Option(help="Evaluate on dev every N generations."),
    "patience": typer.Option(help="Stop after N dev evaluations without gain."),
    "seed": typer.Option(help="Optimizer seed."),
}


def _setting_parameters() -> list[inspect.Parameter]:
    hints = get_type_hints(TunerSettings)
    return [
        inspect.Parameter(
            field.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[hints[field.name], _SETTING_OPTIONS[field.name]],
            default=field.default,
        )
        for field in fields(TunerSettings)
    ]


def resume_command(
    task: Path,
    out: Path,
    settings: TunerSettings,
    encrypt_vector: bool,
    keys: KeySource,
    connection: Connection,
) -> str:
    """The command that continues this run: same settings, secrets left to the environment."""
    words = ["cbpt", "tune", str(task), flag("server"), connection.server, "--out", str(out)]
    repeated = [
        *((flag(name), value) for name, value in settings.to_json().items()),
        (flag("encrypt_vector"), encrypt_vector),
        (flag("key_file"), keys.key_file),
        *connection.resumed_options(),
    ]
    for option, value in repeated:
        if value is True:
            words.append(option)
        elif value not in (None, False):
            words += [option, str(value)]
    return shlex.join([*words, "--resume"])


@friendly_errors
@connection_options()
@key_options
@option_group("settings", TunerSettings, _setting_parameters())
def tune(
    task_file: Annotated[Path, typer.Argument(metavar="TASK", help="Task file (.yaml, .toml or .json).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the tuned task and its checkpoint.")],
    settings: TunerSettings,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint in --out.")] = False,
    encrypt_vector: Annotated[
        bool, typer.Option(flag("encrypt_vector"), help="Seal vector.safetensors.")
    ] = False,
    *,
    keys: KeySource,
    connection: Connection,
) -> None:
    """Tune a vector for TASK; Ctrl-C keeps the checkpoint and prints how to resume."""
    from cbpt.client.progress import TuningProgress  # rich progress; only this command needs it
    from cbpt.client.tuner import Tuner

    task = Task.from_file(task_file)
    task.load()  # data errors surface here, as one line, before any connection or progress bar
    key = keys.key()
    console = Console(stderr=True)
    checkpoint = out / CHECKPOINT_FILE
    if checkpoint.exists() and not resume:
        raise CheckpointError(
            f"a checkpoint exists at {checkpoint}; add --resume to continue, or use another --out"
        )
    if resume and not checkpoint.exists():
        raise CheckpointError(f"no checkpoint at {checkpoint}; nothing to resume")
    with connection.client() as client:
        client.info()  # fail fast, before the progress bar, on an unreachable server or a refused key
        tuner = Tuner(client, task, settings=settings, checkpoint=checkpoint, checkpoint_key=key)
        with TuningProgress(console, budget=tuner.generations * settings.popsize) as progress:
            tuner.on_generation = progress.update
            try:
                result = tuner.run(resume=resume)
            except KeyboardInterrupt:
                progress.stop()
                if not checkpoint.exists():
                    typer.echo(
                        "interrupted before the first generation finished; nothing to resume", err=True
                    )
                    raise typer.Exit(EXIT_INTERRUPTED) from None
                done = progress.generations_done
                where = f" (generation {done - 1} done)" if done else ""
                typer.echo(f"interrupted; checkpoint saved at {checkpoint}{where}", err=True)
                command = resume_command(task_file, out, settings, encrypt_vector, keys, connection)
                typer.echo(f"resume with: {command}", err=True)
                secrets = [
                    name
                    for name, value in (
                        ("CBPT_API_KEY", connection.api_key),
                        ("CBPT_PASSPHRASE", keys.passphrase),
                    )
                    if value
                ]
                if secrets:
                    typer.echo(
                        f"(secrets are not repeated: set {' and '.join(secrets)} in the environment)",
                        err=True,
                    )
                raise typer.Exit(EXIT_INTERRUPTED) from None
    notes = save_tuned(out, result, task.format_only(), encrypt=encrypt_vector, key=key)
    summary = Table(title=f"tuned {task.name} on {result.model_id}", show_header=False)
    dev = result.dev_metrics or {}
    for name, value in (
        ("dev accuracy", f"{dev['accuracy']:.4f}" if dev else "n/a (no dev split)"),
        ("dev macro-F1", f"{dev['macro_f1']:.4f}" if dev else "n/a"),
        ("train loss", f"{result.train_loss:.4f}"),
        ("calls used", f"{result.calls_used} of {settings.budget}"),
        ("stopped by", result.stop_reason),
        ("saved to", str(out)),
    ):
        summary.add_row(name, value)
    Console().print(summary)
    for note in notes:
        console.print(f"note: {note}")
