"""How ``cbpt`` reaches a server: nine options, declared once, for every command that talks to one.

``@connection_options()`` puts them in place of a command's ``connection: Connection``
parameter; ``info`` waits less and retries less than the long-running commands.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cbpt.client.rpc.sdk import TuningClient
from cbpt.common.cli import Command, R, flag, settings_options

DEFAULT_SERVER = "127.0.0.1:50051"
# What a resume command repeats: TLS choices (a secret like the API key stays in the environment).
_RESUMED = ("ca_cert", "client_cert", "client_key", "insecure")


class Connection(BaseModel):
    """The server, its credentials and the patience for it, as one command line gave them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    server: str = Field(
        DEFAULT_SERVER, description="Server address host:port.", json_schema_extra={"envvar": "CBPT_SERVER"}
    )
    api_key: str | None = Field(
        None,
        description="API key (prefer the env var).",
        json_schema_extra={"envvar": "CBPT_API_KEY"},
        repr=False,  # a secret: never in a traceback's locals or a log line
    )
    ca_cert: Path | None = Field(None, description="PEM CA certificate that signed the server's.")
    client_cert: Path | None = Field(None, description="PEM client certificate (mTLS).")
    client_key: Path | None = Field(None, description="PEM client private key (mTLS).")
    insecure: bool = Field(False, description="Plaintext (API keys only to loopback hosts).")
    timeout: float = Field(300.0, description="Seconds per request before giving up.")
    retries: int = Field(4, description="Retries on UNAVAILABLE / RESOURCE_EXHAUSTED.")
    retry_window: float = Field(
        60.0,
        description="Seconds to keep retrying a server that answered before and then went away (a restart).",
    )

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
    defaults = {"timeout": timeout, "retries": retries}
    return settings_options("connection", Connection, Connection, defaults=defaults)
