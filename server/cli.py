"""``cbpt-server``: serve, manage keys and certificates, inspect and warm the model.

Every command prints a bad configuration as one line (no traceback) and exits 2.
"""

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cbpt.common.cli import version_option
from cbpt.common.errors import CbptError
from cbpt.server.settings import ServerSettings
from cbpt.server.training.command import TRAIN_DTYPE_HELP, settings_options
from cbpt.server.training.settings import TrainSettings

app = typer.Typer(
    name="cbpt-server",
    help="Serve a frozen LLM for privacy-preserving black-box prompt tuning.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)


@app.callback()
def _main(version: Annotated[bool, version_option("cbpt-server")] = False) -> None:
    """Serve a frozen LLM for privacy-preserving black-box prompt tuning."""


# Options shared by every command that loads the model; None means "not given on the command line".
Config = Annotated[Path | None, typer.Option("--config", help="YAML or TOML settings file (or CBPT_CONFIG).")]
Model = Annotated[str | None, typer.Option(help="Bundled name, Hugging Face id or local folder.")]
CacheDir = Annotated[
    Path | None, typer.Option("--model-cache-dir", help="Where the converted model is cached.")
]
Device = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1, ...")]
Threads = Annotated[int | None, typer.Option(help="Torch CPU threads.")]
Quantize = Annotated[
    str | None,
    typer.Option(help="none, or int8: dynamic int8 Linear layers on CPU (opt-in; see the README)."),
]
BbtDimension = Annotated[int | None, typer.Option(help="Dimension of BBT candidate vectors.")]
PromptLength = Annotated[int | None, typer.Option(help="Soft-prompt vectors the BBT adapter inserts.")]
ProjectionSeed = Annotated[int | None, typer.Option(help="Seed of the BBT random projection.")]
ShippedGenerators = Annotated[
    bool | None,
    typer.Option(
        "--shipped-generators/--no-shipped-generators",
        help="Serve the generators shipped for this model (e.g. cbp-opinion for the bundled one).",
    ),
]
Generators = Annotated[
    list[Path] | None, typer.Option("--generator", help="A trained CBP generator folder (repeatable).")
]


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """Configuration and I/O problems become one red line and exit code 2."""
    try:
        yield
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        _fail(problems)
    except (CbptError, OSError) as exc:
        _fail(str(exc))


def _fail(message: str) -> None:
    errors.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def _settings(**flags: Any) -> ServerSettings:
    given = {name: value for name, value in flags.items() if value is not None and value != []}
    return ServerSettings(**given)


def _build_engine(settings: ServerSettings):
    """Load the model and adapters the settings name (the slow step: seconds with a warm cache)."""
    return settings.engine_recipe().build()


@app.command()
def serve(
    config: Config = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (0 picks a free one).")] = None,
    model: Model = None,
    model_cache_dir: CacheDir = None,
    device: Device = None,
    threads: Threads = None,
    quantize: Quantize = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Server certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM).")] = None,
    client_ca: Annotated[Path | None, typer.Option(help="CA of client certificates; turns on mTLS.")] = None,
    insecure: Annotated[
        bool | None, typer.Option("--insecure/--no-insecure", help="Plaintext, allowed on loopback only.")
    ] = None,
    api_keys_file: Annotated[Path | None, typer.Option(help="JSON file of hashed API keys.")] = None,
    allow_no_auth: Annotated[
        bool | None,
        typer.Option("--allow-no-auth/--no-allow-no-auth", help="Serve without API keys (loopback only)."),
    ] = None,
    reflection: Annotated[bool | None, typer.Option("--reflection/--no-reflection")] = None,
    bbt_dimension: BbtDimension = None,
    prompt_length: PromptLength = None,
    projection_seed: ProjectionSeed = None,
    generators: Generators = None,
    shipped_generators: ShippedGenerators = None,
    max_candidates: Annotated[int | None, typer.Option()] = None,
    max_examples: Annotated[int | None, typer.Option()] = None,
    max_choices: Annotated[int | None, typer.Option()] = None,
    max_text_tokens: Annotated[int | None, typer.Option()] = None,
    max_text_chars: Annotated[int | None, typer.Option()] = None,
    max_choice_tokens: Annotated[int | None, typer.Option()] = None,
    max_choice_chars: Annotated[
        int | None, typer.Option(help="Characters per choice string (refused before tokenising).")
    ] = None,
    max_sequences: Annotated[int | None, typer.Option()] = None,
    max_message_bytes: Annotated[int | None, typer.Option()] = None,
    max_candidate_abs: Annotated[
        float | None, typer.Option(help="Largest absolute value a candidate may hold (refused beyond).")
    ] = None,
    requests_per_minute: Annotated[int | None, typer.Option(help="Default per-key rate limit.")] = None,
    max_concurrent_per_key: Annotated[int | None, typer.Option(help="Default per-key concurrency.")] = None,
    merge_window_ms: Annotated[
        float | None,
        typer.Option(help="How long an idle engine waits to merge concurrent calls (0: no wait)."),
    ] = None,
    merge_max_sequences: Annotated[
        int | None, typer.Option(help="Sequences merged into one engine call.")
    ] = None,
    max_queued_requests: Annotated[
        int | None, typer.Option(help="Calls that may wait for the engine before new ones are refused.")
    ] = None,
    max_concurrent_rpcs: Annotated[
        int | None, typer.Option(help="Calls handled at once, all keys together (default 256).")
    ] = None,
    text_cache_mb_per_key: Annotated[
        int | None, typer.Option(help="MB of cached text states one API key may hold (default 256).")
    ] = None,
    text_cache_mb: Annotated[
        int | None, typer.Option(help="MB of cached text states all keys together may hold (default 1024).")
    ] = None,
    text_cache_keys: Annotated[int | None, typer.Option(help="API keys whose text states are kept.")] = None,
    token_cache_mb: Annotated[
        int | None, typer.Option(help="MB of tokenised texts, choices and cues kept for reuse (default 64).")
    ] = None,
    job_state_mb: Annotated[
        int | None,
        typer.Option(help="MB of text states running jobs hold at once, all together (default 256)."),
    ] = None,
    score_decimals: Annotated[
        int | None, typer.Option(help="Round returned log-probs to this many decimals (0-7).")
    ] = None,
    score_noise: Annotated[
        float | None, typer.Option(help="Std of Gaussian noise added to returned log-probs (nats).")
    ] = None,
    score_noise_seed: Annotated[int | None, typer.Option(help="Seed of that noise (benchmarks).")] = None,
    evaluations_per_day: Annotated[
        int | None, typer.Option(help="Default per-key budget of candidates scored per UTC day.")
    ] = None,
    evaluations_total: Annotated[
        int | None, typer.Option(help="Default per-key budget of candidates scored in total.")
    ] = None,
    usage_file: Annotated[
        Path | None, typer.Option(help="JSON file that keeps budget usage across restarts.")
    ] = None,
    keys_reload_seconds: Annotated[
        float | None, typer.Option(help="Check the keys file for changes this often (0: only on SIGHUP).")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port (off unless given).")
    ] = None,
    metrics_host: Annotated[
        str | None, typer.Option(help="Interface of the metrics endpoint (default 127.0.0.1).")
    ] = None,
    grace_seconds: Annotated[
        float | None,
        typer.Option(
            help="Seconds in-flight calls get on shutdown; calls still running then get UNAVAILABLE."
        ),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
    log_json: Annotated[bool | None, typer.Option("--log-json/--no-log-json")] = None,
    backend: Annotated[
        str | None, typer.Option(help="in-process (default), or ray: engine replicas on Ray Serve.")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (ray://head:10001); unset: a local Ray.")
    ] = None,
    replicas: Annotated[int | None, typer.Option(help="Engine replicas (Ray backend).")] = None,
    max_replicas: Annotated[
        int | None, typer.Option(help="Autoscale up to this many replicas (Ray).")
    ] = None,
    replica_cpus: Annotated[float | None, typer.Option(help="CPUs reserved per replica (Ray).")] = None,
    replica_gpus: Annotated[float | None, typer.Option(help="GPUs per replica (Ray; 1: a GPU each).")] = None,
    generators_per_replica: Annotated[
        int | None, typer.Option(help="Load CBP generators on demand, this many per replica (Ray; 0: all).")
    ] = None,
    ray_batching: Annotated[
        str | None, typer.Option(help="scheduler (default) or serve-batch: how a replica gathers a batch.")
    ] = None,
) -> None:
    """Serve the Tuning service until SIGTERM/SIGINT, then drain gracefully."""
    flags = dict(locals())
    from cbpt.server.front.app import serve as run_server
    from cbpt.server.front.keys import KeyStore
    from cbpt.server.logs import configure_logging

    with _one_line_errors():
        settings = _settings(**flags)
        configure_logging(settings.log_level, settings.log_json)
        settings.check_serving()  # before the slow model load
        if settings.api_keys_file is not None:
            KeyStore.from_file(settings.api_keys_file)
        if settings.backend == "ray":  # the front loads no model: the replicas do
            from cbpt.server.deploy.ray_serve import start as start_ray_backend

            engine = start_ray_backend(settings)
        else:
            engine = _build_engine(settings)
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
def info(
    config: Config = None,
    model: Model = None,
    model_cache_dir: CacheDir = None,
    device: Device = None,
    threads: Threads = None,
    quantize: Quantize = None,
    bbt_dimension: BbtDimension = None,
    prompt_length: PromptLength = None,
    projection_seed: ProjectionSeed = None,
    generators: Generators = None,
    shipped_generators: ShippedGenerators = None,
) -> None:
    """Load the engine and show the model identity, adapters and limits."""
    flags = dict(locals())
    with _one_line_errors():
        settings = _settings(**flags)
        engine_info = _build_engine(settings).info()
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
def convert_model(
    config: Config = None,
    model: Model = None,
    model_cache_dir: CacheDir = None,
    device: Device = None,
    threads: Threads = None,
) -> None:
    """Warm the converted-model cache, so that the first ``serve`` starts in seconds."""
    flags = dict(locals())
    from cbpt.server.model import load_model

    with _one_line_errors():
        settings = _settings(**flags)
        bundle = load_model(
            settings.model,
            cache_dir=settings.model_cache_dir,
            device=settings.device,
            threads=settings.threads,
        )
    console.print(f"cached {bundle.model_id} (fingerprint {bundle.fingerprint[:16]}...)", highlight=False)


@app.command("train-generator")
@settings_options
def train_generator(
    domain_file: Annotated[
        Path, typer.Argument(metavar="DOMAIN_FILE", help="YAML domain file (tasks to train on).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder; the same command resumes a run there.")],
    settings: TrainSettings,
    config: Config = None,
    model: Model = None,
    model_cache_dir: CacheDir = None,
    device: Device = None,
    threads: Threads = None,
    dtype: Annotated[str, typer.Option(help=TRAIN_DTYPE_HELP)] = "float32",
) -> None:
    """Train a domain prompt generator (CBP-Tuning's first stage) with the model frozen; resumable."""
    from cbpt.server.logs import configure_logging
    from cbpt.server.model import load_model
    from cbpt.server.training.command import TrainingProgress, command_line, print_result, train_dtype
    from cbpt.server.training.trainer import train_generator as run_training

    with _one_line_errors():
        server = _settings(
            config=config, model=model, model_cache_dir=model_cache_dir, device=device, threads=threads
        )
        configure_logging(server.log_level, server.log_json)
        bundle = load_model(
            server.model,
            cache_dir=server.model_cache_dir,
            device=server.device,
            dtype=train_dtype(dtype),
            threads=server.threads,
        )
        stderr = Console(stderr=True)
        with TrainingProgress(stderr, settings.steps) as progress:
            result = run_training(
                bundle, domain_file, out, settings, command=command_line(), on_step=progress.update
            )
    print_result(console, result)


if __name__ == "__main__":
    app()
