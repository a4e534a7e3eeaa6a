"""The light cbp-tuning client: SDK, tasks, tuner, optimizers, checkpoints and the ``cbpt`` CLI.

Nothing in this package imports torch or transformers; labels and losses stay on the client.
The main names are importable from here (loaded on first use)::

    from cbpt.client import Task, Tuner, TunerSettings, TuningClient, load_tuned
"""

from __future__ import annotations

from cbpt.common.lazy import lazy_exports
from cbpt.common.version import __version__

_EXPORTS = {
    "TuningClient": "cbpt.client.sdk",
    "TLSConfig": "cbpt.client.sdk",
    "ServerInfo": "cbpt.client.info",
    "Task": "cbpt.client.task",
    "TaskFormat": "cbpt.client.task",
    "Tuner": "cbpt.client.tuner",
    "TunerSettings": "cbpt.client.settings",
    "Candidate": "cbpt.client.results",
    "Choices": "cbpt.common.choices",
    "TuningResult": "cbpt.client.results",
    "HistoryRow": "cbpt.client.results",
    "load_tuned": "cbpt.client.artifacts",
    "save_tuned": "cbpt.client.artifacts",
}
__all__ = [*_EXPORTS, "__version__"]


__getattr__ = lazy_exports(__name__, _EXPORTS)
