"""A run folder while and after it tunes: kept current by ``RunRecorder``, read by ``RunSummary``.

After every generation (a tell callback, so right after the checkpoint) history.jsonl gains that
generation's row and the best vector so far is saved with a task.json marked ``partial``, so another
terminal can watch a run, and a run killed at any point still leaves a usable vector. ``RunSummary``
reads a folder alone (no key, no server): its status, calls used, best dev metrics and curve.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cbpt.client.errors import ArtifactError
from cbpt.client.files.artifacts import HISTORY_FILE, history_lines, read_history, save_tuned
from cbpt.client.files.crypto import KeySpec
from cbpt.client.tuning.results import HistoryRow, StopReason, TuningResult
from cbpt.common.files import write_atomic
from cbpt.common.tasks.task import TaskFormat

if TYPE_CHECKING:
    from cbpt.client.tuning.tuner import Tuner

CHECKPOINT_FILE = "checkpoint.cbpt"
CARD_FILE = "task.json"
STATUSES = ("finished", "interrupted", "running", "started")


class RunRecorder:
    """Keeps a run folder current: ``tuner.register_callback("tell", recorder)``."""

    def __init__(
        self, folder: Path, task_format: TaskFormat, *, encrypt: bool = False, key: KeySpec = None
    ) -> None:
        self.folder = Path(folder)
        self.task_format = task_format
        self.encrypt = encrypt
        self.key = key
        self._rows_written: int | None = None  # None: history.jsonl not yet (re)started by this run

    def __call__(self, tuner: Tuner, row: HistoryRow) -> None:
        """Append the newest history row and save the best vector so far (task.json: partial)."""
        result = tuner.result_so_far()
        history = self.folder / HISTORY_FILE
        if self._rows_written is None or self._rows_written != len(result.history) - 1:
            # First row of this process (a resumed run's rows come from its checkpoint): start afresh.
            write_atomic(history, history_lines(result.history).encode("utf-8"), mode=0o644)
        else:
            with history.open("a", encoding="utf-8") as handle:
                handle.write(history_lines(result.history[-1:]))
                handle.flush()
                os.fsync(handle.fileno())
        self._rows_written = len(result.history)
        save_tuned(self.folder, result, self.task_format, encrypt=self.encrypt, key=self.key, partial=True)

    def interrupted(self, result: TuningResult) -> None:
        """Mark the saved best-so-far vector as left by a run that stopped early (Ctrl-C, an error)."""
        stopped = dataclasses.replace(result, stop_reason=StopReason.INTERRUPTED)
        save_tuned(self.folder, stopped, self.task_format, encrypt=self.encrypt, key=self.key, partial=True)

    def finish(self, result: TuningResult) -> list[str]:
        """The final save: the chosen vector, task.json no longer partial, history and curve."""
        notes = save_tuned(self.folder, result, self.task_format, encrypt=self.encrypt, key=self.key)
        self._rows_written = len(result.history)
        return notes


@dataclass(frozen=True)
class RunSummary:
    """What a run folder says about its run (``cbpt show``, ``cbpt runs``)."""

    folder: Path
    status: str  # finished | interrupted | running (or killed) | started (no generation yet)
    task: str | None
    adapter: str | None
    optimizer: str | None
    calls_used: int
    budget: int | None
    stop_reason: StopReason | None
    dev_metrics: dict[str, Any] | None
    train_loss: float | None
    updated_at: str | None
    curve: tuple[HistoryRow, ...]

    @classmethod
    def read(cls, folder: Path) -> RunSummary:
        folder = Path(folder)
        card_path = folder / CARD_FILE
        if not card_path.is_file():
            if (folder / CHECKPOINT_FILE).is_file():
                return cls(folder, "started", None, None, None, 0, None, None, None, None, None, ())
            raise ArtifactError(f"{folder} is not a run folder (no {CARD_FILE} and no {CHECKPOINT_FILE})")
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ArtifactError(f"cannot read {card_path}: {error}") from None
        if not isinstance(card, dict):
            raise ArtifactError(f"{card_path} does not hold a JSON object")
        history = folder / HISTORY_FILE
        curve = read_history(history) if history.is_file() else ()
        settings = card.get("settings") or {}
        word = card.get("stop_reason")
        try:
            stop = None if word is None else StopReason.parse(word, "stop_reason")
        except ValueError as error:
            raise ArtifactError(f"{card_path}: {error}") from None
        interrupted = stop is StopReason.INTERRUPTED
        status = "finished" if not card.get("partial") else "interrupted" if interrupted else "running"
        updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(card_path.stat().st_mtime))
        return cls(
            folder=folder,
            status=status,
            task=card.get("task_name"),
            adapter=card.get("adapter"),
            optimizer=card.get("optimizer"),
            calls_used=int(card.get("calls_used") or 0),
            budget=settings.get("budget"),
            stop_reason=stop,
            dev_metrics=card.get("dev_metrics"),
            train_loss=card.get("train_loss"),
            updated_at=updated,
            curve=curve,
        )

    def to_json(self, *, curve: bool = True) -> dict[str, Any]:
        """The ``cbpt show --json`` shape (``cbpt runs --json`` lists these without the curve)."""
        document: dict[str, Any] = {
            "folder": str(self.folder),
            "status": self.status,
            "task": self.task,
            "adapter": self.adapter,
            "optimizer": self.optimizer,
            "calls_used": self.calls_used,
            "budget": self.budget,
            "stop_reason": self.stop_reason,
            "dev_accuracy": None if self.dev_metrics is None else self.dev_metrics.get("accuracy"),
            "dev_macro_f1": None if self.dev_metrics is None else self.dev_metrics.get("macro_f1"),
            "train_loss": self.train_loss,
            "updated_at": self.updated_at,
        }
        if curve:
            document["curve"] = [
                {
                    "generation": row.generation,
                    "calls_used": row.calls_used,
                    "best_loss": row.best_loss,
                    "mean_loss": row.mean_loss,
                    "dev_accuracy": row.dev_accuracy,
                }
                for row in self.curve
            ]
        return document


def find_runs(root: Path, depth: int = 3) -> Iterator[Path]:
    """Run folders at or below ``root`` (a sweep keeps one per seed), in sorted order."""
    root = Path(root)
    if (root / CARD_FILE).is_file() or (root / CHECKPOINT_FILE).is_file():
        yield root
    if depth > 0 and root.is_dir():
        for child in sorted(
            path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")
        ):
            yield from find_runs(child, depth - 1)
