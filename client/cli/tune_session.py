"""One ``cbpt tune`` run in a folder: progress, the folder kept current, and a resume command on any early
exit.

Whatever ends a run before its budget (Ctrl-C, SIGTERM, a server that stays away, a bug) leaves
the checkpoint, marks the saved best-so-far vector ``interrupted``, and prints the command that
continues the run, rebuilt from the same settings object the run used (so a new setting cannot
be forgotten). Secrets (API key, passphrase) are left to the environment, never echoed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console

from cbpt.client.cli.app import (
    EXIT_FAILURE,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    USAGE_ERRORS,
    one_line,
)
from cbpt.client.cli.connection import Connection
from cbpt.client.cli.keys import KeySource
from cbpt.client.errors import CheckpointError
from cbpt.client.tuning.auto import AUTO, AutoChoice, choose_generator
from cbpt.client.tuning.results import TuningResult
from cbpt.client.tuning.runs import CHECKPOINT_FILE, RunRecorder
from cbpt.client.tuning.settings import TunerSettings
from cbpt.common.cli import flag
from cbpt.common.errors import CbptError
from cbpt.common.tasks.task import Task

if TYPE_CHECKING:
    from cbpt.client.tuning.tuner import Tuner


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a run stops exactly as Ctrl-C stops it."""


@contextlib.contextmanager
def sigterm_stops_like_ctrl_c() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class RunRequest:
    """Everything one run was asked with: what the resume command repeats."""

    task_file: Path
    task: Task  # seeded (its ``seed`` is the shots seed)
    out: Path
    settings: TunerSettings  # its ``seed`` is the optimizer seed
    encrypt_vector: bool
    keys: KeySource
    connection: Connection

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT_FILE


def resume_command(request: RunRequest, *, sweep: str | None = None) -> str:
    """The command that continues this run (or, with ``sweep``, every seed of a sweep)."""
    settings, connection = request.settings, request.connection
    words = [
        "cbpt",
        "tune",
        str(request.task_file),
        flag("server"),
        connection.server,
        "--out",
        str(request.out),
    ]
    seeds: list[tuple[str, object]] = (
        [("--seeds", sweep)]
        if sweep is not None
        else [("--shots-seed", request.task.seed), ("--optimizer-seed", settings.seed)]
    )
    repeated = [
        *((flag(name), value) for name, value in settings.to_json().items() if name != "seed"),
        *seeds,
        (flag("encrypt_vector"), request.encrypt_vector),
        (flag("key_file"), request.keys.key_file),
        *connection.resumed_options(),
    ]
    for option, value in repeated:
        if value is True:
            words.append(option)
        elif value not in (None, False):
            words += [option, str(value)]
    return shlex.join([*words, "--resume"])


def check_folder(request: RunRequest, resume: bool) -> None:
    checkpoint = request.checkpoint
    if checkpoint.exists() and not resume:
        raise CheckpointError(
            f"a checkpoint exists at {checkpoint}; add --resume to continue, or use another --out"
        )
    if resume and not checkpoint.exists():
        raise CheckpointError(f"no checkpoint at {checkpoint}; nothing to resume")


def run_in_folder(
    request: RunRequest, *, resume: bool, quiet: bool, resume_hint: str | None = None
) -> tuple[TuningResult, list[str], AutoChoice | None]:
    """Tune ``request`` into its folder; return the result, notes (e.g. a skipped plot) and, with
    ``--adapter auto``, the generator chosen (its calls are in the result's ``calls_used``)."""
    from cbpt.client.cli.progress import TuningProgress  # rich progress; only this command needs it
    from cbpt.client.tuning.tuner import Tuner

    key = request.keys.key()
    recorder = RunRecorder(request.out, request.task.format_only(), encrypt=request.encrypt_vector, key=key)
    with request.connection.client() as client:
        client.info()  # fail fast, before the progress bar, on an unreachable server or a refused key
        settings, auto = request.settings, None
        if settings.adapter == AUTO:
            auto = choose_generator(client, request.task)
            settings = auto.settings_for(settings)
            for line in [] if quiet else auto.lines():
                Console(stderr=True).print(line, highlight=False)
        tuner = Tuner(
            client, request.task, settings=settings, checkpoint=request.checkpoint, checkpoint_key=key
        )
        tuner.prepare()  # every train and dev text known to fit, before the progress bar
        console = Console(stderr=True)
        budget = tuner.generations * request.settings.popsize
        with TuningProgress(console, budget=budget, quiet=quiet) as progress, sigterm_stops_like_ctrl_c():
            tuner.register_callback("tell", recorder)  # after the tuner's own: right after the checkpoint
            tuner.register_callback("tell", progress)
            try:
                result = tuner.run(resume=resume)
            except BaseException as error:
                progress.stop()
                _leave(error, request, tuner, recorder, resume_hint)
    if auto is not None:
        result = dataclasses.replace(result, calls_used=result.calls_used + auto.calls)
    shortened = [f"shortened {tuner.truncated} train/dev texts to fit the server"] if tuner.truncated else []
    unpredicted = unpredicted_classes_note(
        result.dev_metrics, recorder.task_format.class_names, fit_bias=request.settings.fit_bias
    )
    notes = shortened + unpredicted + [budget_note(client.stats.budget_used)] + recorder.finish(result)
    return result, notes, auto


def budget_note(charged: int) -> str:
    """What this session cost against a provider's budget, whose unit is not the tuner's "call"."""
    return (
        f"the server counted {charged} evaluations against your key's budget this session "
        "(one per candidate and example, per choice in full-choice mode, train and dev; a call here is one "
        "candidate over the train set)"
    )


def unpredicted_classes_note(
    dev_metrics: dict[str, Any] | None, class_names: tuple[str, ...] | None, *, fit_bias: bool
) -> list[str]:
    """A note when the tuned vector never predicts some class on dev: the accuracy can look fine while
    a class is lost (a generator trained on other label sets does this), and the bias is the remedy."""
    confusion = (dev_metrics or {}).get("confusion_matrix")
    if not confusion or class_names is None:
        return []
    predicted = [sum(column) for column in zip(*confusion, strict=True)]
    never = [name for name, count in zip(class_names, predicted, strict=False) if count == 0]
    if not never:
        return []
    remedy = "" if fit_bias else "; --fit-bias often brings it back"
    listed = ", ".join(repr(name) for name in never)
    return [f"on dev the tuned vector never predicts {listed}{remedy}"]


def _leave(
    error: BaseException, request: RunRequest, tuner: Tuner, recorder: RunRecorder, hint: str | None
) -> NoReturn:
    """Say what stopped the run and how to continue it; exit with the code that says why."""
    if isinstance(error, (CheckpointError, *USAGE_ERRORS)):
        raise error  # the command itself is at fault (settings, checkpoint): one line, no resume hint
    interrupted = isinstance(error, KeyboardInterrupt)
    code = EXIT_TERMINATED if isinstance(error, Terminated) else EXIT_INTERRUPTED
    if not request.checkpoint.exists():
        if interrupted:
            typer.echo("interrupted before the first generation finished; nothing to resume", err=True)
            raise typer.Exit(code) from None
        raise error
    done = 0
    with contextlib.suppress(CbptError):
        so_far = tuner.result_so_far()
        done = len(so_far.history)
        recorder.interrupted(so_far)
    if isinstance(error, CbptError):
        typer.echo(f"error: {one_line(error)}", err=True)
        code = EXIT_INPUT if isinstance(error, USAGE_ERRORS) else EXIT_FAILURE
    elif interrupted:
        typer.echo("terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted", err=True)
    where = f" ({done} generations done)" if done else ""
    typer.echo(f"checkpoint saved at {request.checkpoint}{where}", err=True)
    typer.echo(f"resume with: {hint or resume_command(request)}", err=True)
    secrets = [
        name
        for name, value in (
            ("CBPT_API_KEY", request.connection.api_key),
            ("CBPT_PASSPHRASE", request.keys.passphrase),
        )
        if value
    ]
    if secrets:
        typer.echo(f"(secrets are not repeated: set {' and '.join(secrets)} in the environment)", err=True)
    if not (interrupted or isinstance(error, CbptError)):
        raise error  # a bug: its traceback follows the resume command
    raise typer.Exit(code) from None
