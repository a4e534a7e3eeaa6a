"""How ``cbpt`` reaches a server: nine options, declared once, for every command that talks to one.

``@connection_options()`` puts them in place of a command's ``connection: Connection``
parameter; ``info`` waits less and retries less than the long-running commands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from cbpt.client.cli.options import Command, R, dataclass_options, flag, option_group
from cbpt.client.rpc.sdk import TuningClient

DEFAULT_SERVER = "127.0.0.1:50051"
# What a resume command repeats: TLS choices (a secret like the API key stays in the environment).
_RESUMED = ("ca_cert", "client_cert", "client_key", "insecure")


@dataclass(frozen=True)
class Connection:
    """The server, its credentials and the patience for it, as one command line gave them."""

    server: Annotated[
        str, typer.Option("--server", envvar="CBPT_SERVER", help="Server address host:port.")
    ] = DEFAULT_SERVER
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="CBPT_API_KEY", help="API key (prefer the env var).", show_default=False
        ),
    ] = None
    ca_cert: Annotated[
        Path | None, typer.Option("--ca-cert", help="PEM CA certificate that signed the server's.")
    ] = None
    client_cert: Annotated[
        Path | None, typer.Option("--client-cert", help="PEM client certificate (mTLS).")
    ] = None
    client_key: Annotated[
        Path | None, typer.Option("--client-key", help="PEM client private key (mTLS).")
    ] = None
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext (API keys only to loopback hosts).")
    ] = False
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per request before giving up.")] = 300.0
    retries: Annotated[
        int, typer.Option("--retries", help="Retries on UNAVAILABLE / RESOURCE_EXHAUSTED.")
    ] = 4
    retry_window: Annotated[
        float,
        typer.Option(
            "--retry-window",
            help="Seconds to keep retrying a server that answered before and then went away (a restart).",
        ),
    ] = 60.0

    def client(self) -> TuningClient:
        return TuningClient(
            self.server,
            api_key=self.api_key or None,
            tls=False if self.insecure else None,
            root_certificates=self.ca_cert,
            client_cert=self.client_cert,
            client_key=self.client_key,
            timeout=self.timeout,
            max_retries=self.retries,
            retry_window=self.retry_window,
        )

    def resumed_options(self) -> list[tuple[str, object]]:
        """(flag, value) of the options a resume command repeats."""
        return [(flag(name), getattr(self, name)) for name in _RESUMED]


def connection_options(*, timeout: float = 300.0, retries: int = 4) -> Callable[[Command[R]], Command[R]]:
    """Give a command the connection options (with these defaults) as one ``connection`` object."""
    return option_group(
        "connection", Connection, dataclass_options(Connection, timeout=timeout, retries=retries)
    )
