"""The light cbp-tuning client: SDK, tasks, tuner, optimizers, checkpoints and the ``cbpt`` CLI.

Nothing in this package imports torch or transformers; labels and losses stay on the client.
The main names are importable from here (loaded on first use)::

    from cbpt.client import Task, Tuner, TunerSettings, TuningClient, load_tuned
"""

from __future__ import annotations

from cbpt.common.lazy import lazy_exports
from cbpt.common.version import __version__

_EXPORTS = {
    "TuningClient": "cbpt.client.rpc.sdk",
    "TLSConfig": "cbpt.client.rpc.sdk",
    "ServerInfo": "cbpt.common.info",
    "Task": "cbpt.common.tasks.task",
    "TaskFormat": "cbpt.common.tasks.task",
    "Tuner": "cbpt.client.tuning.tuner",
    "TunerSettings": "cbpt.client.tuning.settings",
    "Candidate": "cbpt.client.tuning.results",
    "Choices": "cbpt.common.choices",
    "TuningResult": "cbpt.client.tuning.results",
    "HistoryRow": "cbpt.client.tuning.results",
    "load_tuned": "cbpt.client.files.artifacts",
    "save_tuned": "cbpt.client.files.artifacts",
}
__all__ = [*_EXPORTS, "__version__"]


__getattr__ = lazy_exports(__name__, _EXPORTS)
