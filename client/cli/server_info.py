"""``cbpt info``: what a server runs (model, fingerprint, adapters, limits), before any tuning."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from cbpt.client.cli.app import friendly_errors
from cbpt.client.cli.connection import Connection, connection_options


@friendly_errors
@connection_options(timeout=30.0, retries=2)
def info(connection: Connection) -> None:
    """Show the server's model, fingerprint, adapters and limits."""
    with connection.client() as client:
        details = client.info()
    console = Console()
    model = Table(title=f"cbpt server {connection.server}", show_header=False)
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
        "adapter",
        "method",
        "dimension",
        "prompt length",
        "placement",
        "domain",
        "description",
        title="adapters",
    )
    for adapter in details.adapters:
        adapters.add_row(
            adapter.name,
            adapter.method,
            str(adapter.dimension),
            str(adapter.prompt_length),
            adapter.placement,
            adapter.domain,
            adapter.description,
        )
    console.print(adapters)
    limits = Table("limit", "value", title="limits")
    for name, value in vars(details.limits).items():
        limits.add_row(name, str(value))
    console.print(limits)
