"""``cbpt info``: what a server runs (model, fingerprint, adapters, limits), before any tuning."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from cbpt.client.cli.app import JsonOutput, friendly_errors, print_json
from cbpt.client.cli.connection import Connection, connection_options
from cbpt.common.info import ServerInfo


def info_document(server: str, details: ServerInfo) -> dict[str, Any]:
    """The ``cbpt info --json`` shape: the server's self-description, field names as on the wire."""
    return {
        "server": server,
        "model_id": details.model_id,
        "model_fingerprint": details.model_fingerprint,
        "hidden_size": details.hidden_size,
        "server_version": details.server_version,
        "adapters": [asdict(adapter) for adapter in details.adapters],
        "limits": details.limits.model_dump(),
    }


@friendly_errors
@connection_options(timeout=30.0, retries=2)
def info(connection: Connection, as_json: JsonOutput = False) -> None:
    """Show the server's model, fingerprint, adapters and limits."""
    with connection.client() as client:
        details = client.info()
    if as_json:
        print_json(info_document(connection.server, details))
        return
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
