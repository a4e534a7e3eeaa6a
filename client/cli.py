"""``cbpt``: inspect a server, tune a task, evaluate and predict with a tuned vector.

Every failure the user can fix prints ONE line and exits 1 (server, key,
checkpoint) or 2 (task file, data, settings); tracebacks are for bugs only.
Secrets (API key, passphrase) come from flags or the environment and are never
echoed, not even in the resume command printed after Ctrl-C.
"""

from __future__ import annotations

import functools
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from cbpt.client.artifacts import ArtifactError, load_tuned, read_task_format, save_tuned
from cbpt.client.crypto import KeySpec, SecretKey
from cbpt.client.errors import CheckpointError, ClientError, ConfigError, TaskError
from cbpt.client.losses import calibrate, metrics
from cbpt.client.sdk import TuningClient
from cbpt.client.task import Examples, Task

app = typer.Typer(
    name="cbpt",
    help="Privacy-preserving black-box prompt tuning: labels and losses never leave this machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals would include API keys and passphrases
)

CHECKPOINT_FILE = "checkpoint.cbpt"
_USAGE_ERRORS = (TaskError, ConfigError, ArtifactError)

Server = Annotated[str, typer.Option("--server", envvar="CBPT_SERVER", help="Server address host:port.")]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key", envvar="CBPT_API_KEY", help="API key (prefer the env var).", show_default=False
    ),
]
CaCert = Annotated[
    Path | None, typer.Option("--ca-cert", help="PEM CA certificate that signed the server's.")
]
ClientCert = Annotated[Path | None, typer.Option("--client-cert", help="PEM client certificate (mTLS).")]
ClientKey = Annotated[Path | None, typer.Option("--client-key", help="PEM client private key (mTLS).")]
Insecure = Annotated[bool, typer.Option("--insecure", help="Plaintext (API keys only to loopback hosts).")]
Timeout = Annotated[float, typer.Option("--timeout", help="Seconds per request before giving up.")]
Retries = Annotated[int, typer.Option("--retries", help="Retries on UNAVAILABLE / RESOURCE_EXHAUSTED.")]
Passphrase = Annotated[
    str | None,
    typer.Option(
        "--passphrase",
        envvar="CBPT_PASSPHRASE",
        help="Encrypt checkpoints/vectors with a passphrase.",
        show_default=False,
    ),
]
KeyFile = Annotated[
    Path | None,
    typer.Option(
        "--key-file",
        envvar="CBPT_KEY_FILE",
        help="32-byte key file [default: ~/.config/cbpt/checkpoint.key].",
    ),
]
DEFAULT_SERVER = "127.0.0.1:50051"

F = TypeVar("F", bound=Callable[..., Any])


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _fail(message: object, code: int) -> None:
    typer.echo(f"error: {_one_line(message)}", err=True)
    raise typer.Exit(code)


def friendly_errors(command: F) -> F:
    """Turn expected errors into one line on stderr and an exit code (2: fix your input, 1: the rest)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except _USAGE_ERRORS as error:
            _fail(error, 2)
        except ClientError as error:
            _fail(error, 1)

    return wrapper  # type: ignore[return-value]


def _client(
    server: str,
    api_key: str | None,
    ca_cert: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    insecure: bool,
    timeout: float,
    retries: int,
) -> TuningClient:
    return TuningClient(
        server,
        api_key=api_key or None,
        tls=False if insecure else None,
        root_certificates=ca_cert,
        client_cert=client_cert,
        client_key=client_key,
        timeout=timeout,
        max_retries=retries,
    )


def _key(passphrase: str | None, key_file: Path | None) -> KeySpec:
    return SecretKey.from_passphrase(passphrase) if passphrase else key_file


# -- info ------------------------------------------------------------------------------------------
@app.command()
@friendly_errors
def info(
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
    ca_cert: CaCert = None,
    client_cert: ClientCert = None,
    client_key: ClientKey = None,
    insecure: Insecure = False,
    timeout: Timeout = 30.0,
    retries: Retries = 2,
) -> None:
    """Show the server's model, fingerprint, adapters and limits."""
    with _client(server, api_key, ca_cert, client_cert, client_key, insecure, timeout, retries) as client:
        details = client.info()
    console = Console()
    model = Table(title=f"cbpt server {server}", show_header=False)
    model.add_column("field", no_wrap=True)
    model.add_column("value", overflow="fold")
    for name, value in (
        ("model", details.model_id),
        ("fingerprint", details.model_fingerprint),
        ("hidden size", str(details.hidden_size)),
        ("server version", details.server_version),
    ):
        model.add_row(name, value)
    console.print(model)
    adapters = Table(
        "adapter", "method", "dimension", "prompt length", "domain", "description", title="adapters"
    )
    for adapter in details.adapters:
        adapters.add_row(
            adapter.name,
            adapter.method,
            str(adapter.dimension),
            str(adapter.prompt_length),
            adapter.domain,
            adapter.description,
        )
    console.print(adapters)
    limits = Table("limit", "value", title="limits")
    for name, value in vars(details.limits).items():
        limits.add_row(name, str(value))
    console.print(limits)


# -- tune ------------------------------------------------------------------------------------------
def _resume_command(task: Path, out: Path, server: str, flags: dict[str, Any]) -> str:
    """The command that continues this run: same settings, secrets left to the environment."""
    words = ["cbpt", "tune", str(task), "--server", server, "--out", str(out)]
    for flag, value in flags.items():
        if value is True:
            words.append(flag)
        elif value not in (None, False):
            words += [flag, str(value)]
    return shlex.join([*words, "--resume"])


@app.command()
@friendly_errors
def tune(
    task_file: Annotated[Path, typer.Argument(metavar="TASK", help="Task file (.yaml, .toml or .json).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the tuned task and its checkpoint.")],
    adapter: Annotated[str, typer.Option(help="Server adapter to tune (see `cbpt info`).")] = "bbt",
    optimizer: Annotated[str, typer.Option(help="cma, or ng:<name> for any nevergrad optimizer.")] = "cma",
    budget: Annotated[int, typer.Option(help="Candidate evaluations on the train set.")] = 200,
    popsize: Annotated[int, typer.Option(help="Candidates per generation (one request).")] = 20,
    sigma0: Annotated[float, typer.Option(help="Initial step size.")] = 1.0,
    loss: Annotated[str, typer.Option(help="ce, hinge or error.")] = "ce",
    fit_bias: Annotated[
        bool, typer.Option("--fit-bias", help="Fit a per-choice bias on the client.")
    ] = False,
    select_on: Annotated[
        str, typer.Option(help="Pick the vector by dev 'accuracy' or dev cross-entropy ('loss').")
    ] = "accuracy",
    select_from: Annotated[
        str,
        typer.Option(
            help="What each generation offers to the dev selection: its lowest-train-loss 'best' candidate, "
            "or CMA-ES's 'mean' (cma only)."
        ),
    ] = "best",
    dev_every: Annotated[int, typer.Option(help="Evaluate on dev every N generations.")] = 1,
    patience: Annotated[int | None, typer.Option(help="Stop after N dev evaluations without gain.")] = None,
    seed: Annotated[int, typer.Option(help="Optimizer seed.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the checkpoint in --out.")] = False,
    encrypt_vector: Annotated[
        bool, typer.Option("--encrypt-vector", help="Seal vector.safetensors.")
    ] = False,
    passphrase: Passphrase = None,
    key_file: KeyFile = None,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
    ca_cert: CaCert = None,
    client_cert: ClientCert = None,
    client_key: ClientKey = None,
    insecure: Insecure = False,
    timeout: Timeout = 300.0,
    retries: Retries = 4,
) -> None:
    """Tune a vector for TASK; Ctrl-C keeps the checkpoint and prints how to resume."""
    from cbpt.client.progress import TuningProgress  # rich progress; only this command needs it
    from cbpt.client.tuner import Tuner

    task = Task.from_file(task_file)
    task.load()  # data errors surface here, as one line, before any connection or progress bar
    key = _key(passphrase, key_file)
    console = Console(stderr=True)
    flags = {
        "--adapter": adapter,
        "--optimizer": optimizer,
        "--budget": budget,
        "--popsize": popsize,
        "--sigma0": sigma0,
        "--loss": loss,
        "--fit-bias": fit_bias,
        "--select-on": select_on,
        "--select-from": select_from,
        "--dev-every": dev_every,
        "--patience": patience,
        "--seed": seed,
        "--encrypt-vector": encrypt_vector,
        "--key-file": key_file,
        "--ca-cert": ca_cert,
        "--client-cert": client_cert,
        "--client-key": client_key,
        "--insecure": insecure,
    }
    checkpoint = out / CHECKPOINT_FILE
    if checkpoint.exists() and not resume:
        raise CheckpointError(
            f"a checkpoint exists at {checkpoint}; add --resume to continue, or use another --out"
        )
    if resume and not checkpoint.exists():
        raise CheckpointError(f"no checkpoint at {checkpoint}; nothing to resume")
    with _client(server, api_key, ca_cert, client_cert, client_key, insecure, timeout, retries) as client:
        client.info()  # fail fast, before the progress bar, on an unreachable server or a refused key
        tuner = Tuner(
            client,
            task,
            adapter=adapter,
            optimizer=optimizer,
            budget=budget,
            popsize=popsize,
            sigma0=sigma0,
            loss=loss,
            fit_bias=fit_bias,
            select_on=select_on,
            select_from=select_from,
            dev_every=dev_every,
            patience=patience,
            seed=seed,
            checkpoint=checkpoint,
            checkpoint_key=key,
        )
        with TuningProgress(console, budget=tuner.generations * popsize) as progress:
            tuner.on_generation = progress.update
            try:
                result = tuner.run(resume=resume)
            except KeyboardInterrupt:
                progress.stop()
                if not checkpoint.exists():
                    typer.echo(
                        "interrupted before the first generation finished; nothing to resume", err=True
                    )
                    raise typer.Exit(130) from None
                done = progress.generations_done
                where = f" (generation {done - 1} done)" if done else ""
                typer.echo(f"interrupted; checkpoint saved at {checkpoint}{where}", err=True)
                typer.echo(f"resume with: {_resume_command(task_file, out, server, flags)}", err=True)
                secrets = [
                    name
                    for name, value in (("CBPT_API_KEY", api_key), ("CBPT_PASSPHRASE", passphrase))
                    if value
                ]
                if secrets:
                    typer.echo(
                        f"(secrets are not repeated: set {' and '.join(secrets)} in the environment)",
                        err=True,
                    )
                raise typer.Exit(130) from None
    notes = save_tuned(out, result, task.format_only(), encrypt=encrypt_vector, key=key)
    summary = Table(title=f"tuned {task.name} on {result.model_id}", show_header=False)
    dev = result.dev_metrics or {}
    for name, value in (
        ("dev accuracy", f"{dev['accuracy']:.4f}" if dev else "n/a (no dev split)"),
        ("dev macro-F1", f"{dev['macro_f1']:.4f}" if dev else "n/a"),
        ("train loss", f"{result.train_loss:.4f}"),
        ("calls used", f"{result.calls_used} of {budget}"),
        ("stopped by", result.stop_reason),
        ("saved to", str(out)),
    ):
        summary.add_row(name, value)
    Console().print(summary)
    for note in notes:
        console.print(f"note: {note}")


# -- evaluate / predict ----------------------------------------------------------------------------
def _score(
    client: TuningClient, examples: Examples, tuned_dir: Path | None, task: Task | None, key: KeySpec
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    if tuned_dir is not None:
        tuned = load_tuned(tuned_dir, key=key)
        return tuned.log_probs(client, examples), tuned.format.class_names
    assert task is not None
    empty = np.zeros(0, dtype=np.float32)
    return client.predict(
        "none", empty, examples.texts, examples.choices, task.mode, examples.cue
    ), task.class_names


def _inputs(
    first: Path | None, second: Path | None, zero_shot: bool, task_file: Path | None, *, labels: bool
) -> tuple[Path | None, Task | None, Examples]:
    if zero_shot:
        if task_file is None or second is not None:
            raise ConfigError(
                "--zero-shot takes --task TASK and at most one FILE (default: the task's test file)"
            )
        task = Task.from_file(task_file)
        if first is None:
            return None, task, task.test()
        return None, task, task.load_examples(first, require_labels=labels, field="FILE")
    if first is None or second is None:
        raise ConfigError("give TUNED_DIR and FILE (or --zero-shot --task TASK [FILE])")
    tuned_format = read_task_format(first)
    return first, None, tuned_format.load_examples(second, require_labels=labels, field="FILE")


@app.command()
@friendly_errors
def evaluate(
    tuned_dir: Annotated[Path | None, typer.Argument(metavar="TUNED_DIR", help="Tuned-task folder.")] = None,
    file: Annotated[Path | None, typer.Argument(metavar="FILE", help="Labelled data file.")] = None,
    zero_shot: Annotated[bool, typer.Option("--zero-shot", help="No vector: adapter 'none'.")] = False,
    task_file: Annotated[Path | None, typer.Option("--task", help="Task file for --zero-shot.")] = None,
    calibrated: Annotated[bool, typer.Option("--calibrate", help="Mean-centred calibration.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    passphrase: Passphrase = None,
    key_file: KeyFile = None,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
    ca_cert: CaCert = None,
    client_cert: ClientCert = None,
    client_key: ClientKey = None,
    insecure: Insecure = False,
    timeout: Timeout = 300.0,
    retries: Retries = 4,
) -> None:
    """Accuracy, macro-F1 and confusion matrix on FILE, computed here from the server's log-probs."""
    folder, task, examples = _inputs(tuned_dir, file, zero_shot, task_file, labels=True)
    with _client(server, api_key, ca_cert, client_cert, client_key, insecure, timeout, retries) as client:
        log_probs, class_names = _score(client, examples, folder, task, _key(passphrase, key_file))
    if calibrated:
        log_probs = calibrate(log_probs)
    result = metrics(log_probs, examples.labels, examples.num_choices)
    if as_json:
        typer.echo(json.dumps(result))
        return
    names = list(class_names) if class_names else [f"option {i}" for i in range(examples.num_choices)]
    console = Console()
    console.print(
        f"accuracy {result['accuracy']:.4f}   macro-F1 {result['macro_f1']:.4f}   examples {result['num_examples']}"
    )
    table = Table("true \\ predicted", *names, title="confusion matrix")
    for name, row in zip(names, result["confusion_matrix"], strict=True):
        table.add_row(name, *(str(count) for count in row))
    console.print(table)


@app.command()
@friendly_errors
def predict(
    tuned_dir: Annotated[Path, typer.Argument(metavar="TUNED_DIR", help="Tuned-task folder.")],
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Data file (labels not needed).")],
    out: Annotated[Path, typer.Option("--out", help="Predictions as JSON lines.")] = Path("preds.jsonl"),
    passphrase: Passphrase = None,
    key_file: KeyFile = None,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
    ca_cert: CaCert = None,
    client_cert: ClientCert = None,
    client_key: ClientKey = None,
    insecure: Insecure = False,
    timeout: Timeout = 300.0,
    retries: Retries = 4,
) -> None:
    """Predict FILE with a tuned vector; write one line per row with the prediction and probabilities."""
    from cbpt.common.files import write_atomic

    folder, _, examples = _inputs(tuned_dir, file, False, None, labels=False)
    with _client(server, api_key, ca_cert, client_cert, client_key, insecure, timeout, retries) as client:
        log_probs, class_names = _score(client, examples, folder, None, _key(passphrase, key_file))
    probabilities = np.exp(log_probs)
    lines = []
    for index, row in enumerate(probabilities):
        names = list(class_names) if class_names else list(examples.choices.of_example(index))
        best = int(np.argmax(log_probs[index]))
        record = {
            "row": examples.rows[index],
            "prediction": names[best],
            "index": best,
            "probabilities": {name: round(float(p), 6) for name, p in zip(names, row, strict=False)},
        }
        lines.append(json.dumps(record) + "\n")
    write_atomic(out, "".join(lines).encode("utf-8"), mode=0o644)
    typer.echo(f"wrote {len(lines)} predictions to {out}")
