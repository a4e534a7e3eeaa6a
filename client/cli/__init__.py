"""``cbpt``: inspect a server, tune a task, evaluate and predict with a tuned vector.

One module per job: ``app`` (the Typer app, ``--version``, ``--json`` and one-line errors),
``options`` with the groups declared once (``connection``, ``keys``), and the commands:
``server_info``, ``tuning`` (with ``tune_session``: one run, and how it ends early),
``run_views`` (show and runs), ``evaluation`` (evaluate and predict, with ``scoring``).
They are registered here, in the order ``cbpt --help`` lists them; the entry point is
``cbpt.client.cli:app``.
"""

from cbpt.client.cli.app import app
from cbpt.client.cli.evaluation import evaluate, predict
from cbpt.client.cli.run_views import runs, show
from cbpt.client.cli.server_info import info
from cbpt.client.cli.tuning import tune

for _command in (info, tune, show, runs, evaluate, predict):
    app.command()(_command)

__all__ = ["app"]
