"""``cbpt-server``: serve, manage keys and certificates, inspect and warm the model, train generators.

Every command prints a bad configuration as one line (no traceback) and exits 2. The server's
settings become options from ``ServerSettings`` itself (``cbpt.common.cli``): ``serve`` takes
every one, the others the sections they use.
"""

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cbpt.common.cli import settings_options, validation_problems, version_option
from cbpt.common.errors import CbptError
from cbpt.server.settings import ServerSettings
from cbpt.server.training.command import TRAIN_DTYPE_HELP
from cbpt.server.training.settings import TrainSettings

app = typer.Typer(
    name="cbpt-server",
    help="Serve a frozen LLM for privacy-preserving black-box prompt tuning.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)
R = TypeVar("R")

# The settings each command that loads the model takes (serve takes them all).
MODEL_OPTIONS = ("config", "model", "model_cache_dir", "device", "threads")
ENGINE_OPTIONS = ("config", "engine", "adapters")


@app.callback()
def _main(version: Annotated[bool, version_option("cbpt-server")] = False) -> None:
    """Serve a frozen LLM for privacy-preserving black-box prompt tuning."""


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Configuration and I/O problems become one red line and exit code 2."""
    try:
        yield
    except ValidationError as exc:
        _fail(validation_problems(exc, ServerSettings, TrainSettings))
    except (CbptError, OSError) as exc:
        _fail(str(exc))


def one_line_errors(command: Callable[..., R]) -> Callable[..., R]:
    """``_one_line_errors`` around a whole command, its options' validation included."""

    @functools.wraps(command)
    def wrapper(**values: Any) -> R:
        with _one_line_errors():
            return command(**values)

    return wrapper


def _fail(message: str) -> None:
    errors.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def server_options(only: tuple[str, ...] | None = None) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """The command's ``settings: ServerSettings`` from these settings' options (all: ``serve``)."""
    return settings_options("settings", ServerSettings, ServerSettings, only=only)


@app.command()
@one_line_errors
@server_options()
def serve(settings: ServerSettings) -> None:
    """Serve the Tuning service until SIGTERM/SIGINT, then drain gracefully."""
    from cbpt.server.front.app import serve as run_server
    from cbpt.server.front.keys import KeyStore

    settings.logging.configure()
    settings.check_serving()  # before the slow model load
    if settings.auth.api_keys_file is not None:
        KeyStore.from_file(settings.auth.api_keys_file)
    if settings.backend == "ray":  # the front loads no model: the replicas do
        from cbpt.server.deploy.ray_serve import start as start_ray_backend

        engine: Any = start_ray_backend(settings)
    else:
        engine = settings.recipe.build()
    asyncio.run(run_server(engine, settings))


@app.command("gen-certs")
def gen_certs(
    out: Annotated[Path, typer.Option(help="Folder for the PEM files.")],
    hosts: Annotated[
        str, typer.Option(help="Comma-separated DNS names and IPs for the server certificate.")
    ] = ("localhost,127.0.0.1"),
    client: Annotated[bool, typer.Option("--client", help="Also issue a client certificate (mTLS).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
    ca_key: Annotated[
        Path | None,
        typer.Option(help="Where the CA's private key goes (default: <out>-ca-key.pem, beside --out)."),
    ] = None,
) -> None:
    """Write a development CA, a server certificate and optionally a client certificate into --out,
    and the CA key outside it (--out is what a deployment mounts as secrets)."""
    from cbpt.server.front.certs import generate_dev_certificates

    with _one_line_errors():
        names = [h.strip() for h in hosts.split(",") if h.strip()]
        paths = generate_dev_certificates(out, names, client=client, force=force, ca_key=ca_key)
    for label, path in vars(paths).items():
        if path is not None:
            console.print(f"{label:12} {path}", highlight=False)


@app.command("client-cert")
def client_cert(
    name: Annotated[
        str, typer.Argument(help="The certificate's subject CN: the tenant cert:NAME under mTLS.")
    ],
    out: Annotated[Path, typer.Option(help="The --out folder of gen-certs (its ca.pem signs).")],
    ca_key: Annotated[
        Path | None, typer.Option(help="The CA's private key (default: <out>-ca-key.pem, beside --out).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Issue one more client certificate from the development CA: NAME.pem and NAME-key.pem in --out."""
    from cbpt.server.front.certs import issue_client_certificate

    with _one_line_errors():
        key_path = ca_key if ca_key is not None else out.parent / f"{out.name}-ca-key.pem"
        paths = issue_client_certificate(out / "ca.pem", key_path, name, out, force=force)
    for label, path in zip(("client_cert", "client_key"), paths, strict=True):
        console.print(f"{label:12} {path}", highlight=False)


@app.command("add-key")
def add_key(
    name: Annotated[str, typer.Argument(help="Key id shown in logs, e.g. alice.")],
    keys_file: Annotated[Path, typer.Option(help="JSON keys file (created if absent).")],
    requests_per_minute: Annotated[int | None, typer.Option(help="This key's rate limit.")] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="This key's concurrency limit.")] = None,
    evaluations_per_day: Annotated[
        int | None, typer.Option(help="This key's budget of candidates scored per UTC day.")
    ] = None,
    evaluations_total: Annotated[
        int | None, typer.Option(help="This key's budget of candidates in total.")
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="When the key stops working: an ISO date or time, UTC (2027-01-31).")
    ] = None,
    certificate: Annotated[
        str | None,
        typer.Option(help="Instead of a key: the mTLS client certificate (CN or SAN) that is this tenant."),
    ] = None,
) -> None:
    """Create an API key, store only its hash, and print the key once (a running server picks it up);
    with --certificate, an entry that a client certificate opens, and no key."""
    from cbpt.server.errors import KeyFileError
    from cbpt.server.front.keys import add_certificate, parse_expiry
    from cbpt.server.front.keys import add_key as store_key

    with _one_line_errors():
        try:
            until = parse_expiry(expires)
        except ValueError:
            raise KeyFileError(
                f"--expires {expires!r}: expected an ISO date or time such as 2027-01-31"
            ) from None
        budget = {"evaluations_per_day": evaluations_per_day, "evaluations_total": evaluations_total}
        if certificate is not None:
            add_certificate(
                keys_file, name, certificate, requests_per_minute, max_concurrent, **budget, expires=until
            )
            errors.print(f"added certificate {certificate!r} as {name!r} to {keys_file}", highlight=False)
            return
        key = store_key(keys_file, name, requests_per_minute, max_concurrent, **budget, expires=until)
    errors.print(f"added key {name!r} to {keys_file}; it is shown only this once:", highlight=False)
    print(key)


@app.command()
@one_line_errors
@server_options(ENGINE_OPTIONS)
def info(settings: ServerSettings) -> None:
    """Load the engine and show the model identity, adapters and limits."""
    engine_info = settings.recipe.build().info()
    console.print(f"[bold]model[/bold]        {engine_info.model_id}", highlight=False)
    console.print(f"[bold]fingerprint[/bold]  {engine_info.fingerprint}", highlight=False)
    console.print(f"[bold]hidden size[/bold]  {engine_info.hidden_size}", highlight=False)
    table = Table(title="adapters")
    for column in ("name", "method", "dimension", "prompt length", "domain", "description"):
        table.add_column(column)
    for a in engine_info.adapters:
        table.add_row(a.name, a.method, str(a.dimension), str(a.prompt_length), a.domain, a.description)
    console.print(table)
    for folder, reason in engine_info.not_served:
        console.print(f"[bold]not served[/bold]  shipped generator {folder}: {reason}", highlight=False)
    limits = ", ".join(f"{k}={v}" for k, v in vars(engine_info.limits).items())
    console.print(f"[bold]limits[/bold]  {limits}", highlight=False)


@app.command("convert-model")
@one_line_errors
@server_options(MODEL_OPTIONS)
def convert_model(settings: ServerSettings) -> None:
    """Warm the converted-model cache, so that the first ``serve`` starts in seconds."""
    bundle = settings.engine.load_model()
    console.print(f"cached {bundle.model_id} (fingerprint {bundle.fingerprint[:16]}...)", highlight=False)


@app.command("train-generator")
@one_line_errors
@server_options(MODEL_OPTIONS)
@settings_options("training", TrainSettings, TrainSettings)
def train_generator(
    domain_file: Annotated[
        Path, typer.Argument(metavar="DOMAIN_FILE", help="YAML domain file (tasks to train on).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder; the same command resumes a run there.")],
    dtype: Annotated[str, typer.Option(help=TRAIN_DTYPE_HELP)] = "float32",
    *,
    training: TrainSettings,
    settings: ServerSettings,
) -> None:
    """Train a domain prompt generator (CBP-Tuning's first stage) with the model frozen; resumable."""
    from cbpt.server.training.command import TrainingProgress, command_line, print_result, train_dtype
    from cbpt.server.training.trainer import train_generator as run_training

    settings.logging.configure()
    # Training needs the float weights, in the dtype its own --dtype names (not the serving one).
    model = settings.engine.model_copy(update={"quantize": "none", "dtype": "auto"})
    bundle = model.load_model(dtype=train_dtype(dtype))
    with TrainingProgress(Console(stderr=True), training.steps) as progress:
        result = run_training(
            bundle, domain_file, out, training, command=command_line(), on_step=progress.update
        )
    print_result(console, result)


if __name__ == "__main__":
    app()
