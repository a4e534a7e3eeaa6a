"""The tuner's checkpoint: JSON sealed with AES-GCM, written atomically after every generation.

It holds no pickled object. The optimizer is resumed by replay (see
optimizers/base.py): the checkpoint keeps the run's state (``TuningState``: each
generation's losses and a digest of the candidates asked, the history, the best
candidate so far with its vector as a list of floats, the patience count and stop
reason), the optimizer's JSON state (RNG state included) for a final check, and
the tuner's config, which a resume must match exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbpt.client.errors import CheckpointError
from cbpt.client.files.crypto import KeySpec, resolve_key, seal, unseal
from cbpt.client.optimizers import GenerationRecord, Optimizer, replay
from cbpt.client.tuning.results import Candidate, HistoryRow, StopReason
from cbpt.client.tuning.state import TuningState
from cbpt.common.files import write_atomic

MAGIC = b"CBPTCKPT"
FORMAT_VERSION = 1
KIND = "cbpt.tuner-checkpoint"
# The checkpoint config's record of the budget the optimizer was built for (the first run's).
PLANNED_BUDGET = "optimizer_budget"


@dataclass
class Checkpoint:
    """Everything a tuner needs to continue a run exactly where it stopped: the config it must
    match, the run's state, and the optimizer's JSON state (the replay's final check).

    Its JSON keeps the shape of format version 1: the state's fields at the top level and the
    patience count and stop reason under ``progress``, so every checkpoint written since loads.
    """

    config: dict[str, Any]
    state: TuningState = field(default_factory=TuningState)
    optimizer_state: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        state = self.state
        stop_reason = None if state.stop_reason is None else state.stop_reason.value
        return {
            "kind": KIND,
            "config": self.config,
            "generations": [{"digest": g.digest, "losses": list(g.losses)} for g in state.generations],
            "history": [row.to_json() for row in state.history],
            "best": None if state.best is None else state.best.to_json(),
            "optimizer_state": self.optimizer_state,
            "calls_used": state.calls_used,
            "progress": {"stale": state.stale, "stop_reason": stop_reason},
        }

    def replayed(self, optimizer: Optimizer, what: str) -> TuningState:
        """The saved state, once ``optimizer`` (rebuilt from its seed) has replayed every recorded
        generation and come out in exactly the saved optimizer state."""
        replay(optimizer, self.state.generations)
        if _canonical(optimizer.state()) != _canonical(self.optimizer_state):
            raise CheckpointError(f"{what}: the replayed optimizer state differs from the saved one")
        return self.state

    @classmethod
    def from_json(cls, content: Any, what: str) -> Checkpoint:
        try:
            if content.get("kind") != KIND:
                raise CheckpointError(f"{what} is not a tuner checkpoint")
            progress = dict(content["progress"])
            stop_reason = progress.get("stop_reason")
            state = TuningState(
                generations=[
                    GenerationRecord(str(g["digest"]), tuple(float(x) for x in g["losses"]))
                    for g in content["generations"]
                ],
                history=[HistoryRow.from_json(row) for row in content["history"]],
                best=None if content["best"] is None else Candidate.from_json(content["best"]),
                calls_used=int(content["calls_used"]),
                stale=int(progress.get("stale", 0)),
                stop_reason=None
                if stop_reason is None
                else StopReason.parse(stop_reason, "progress.stop_reason"),
            )
            return cls(
                config=dict(content["config"]), state=state, optimizer_state=dict(content["optimizer_state"])
            )
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            if isinstance(error, CheckpointError):
                raise
            raise CheckpointError(f"{what} is malformed ({type(error).__name__}: {error})") from None


def save_checkpoint(path: Path, checkpoint: Checkpoint, key: KeySpec = None) -> None:
    """Seal and atomically replace ``path`` (mode 0600)."""
    plaintext = json.dumps(checkpoint.to_json(), allow_nan=False, separators=(",", ":")).encode("utf-8")
    write_atomic(Path(path), seal(plaintext, resolve_key(key), MAGIC, FORMAT_VERSION))


def load_checkpoint(path: Path, key: KeySpec = None) -> Checkpoint:
    """Read and authenticate a checkpoint; anything doubtful raises CheckpointError."""
    path = Path(path)
    what = f"checkpoint {path}"
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {what}: {error.strerror}") from None
    _, plaintext = unseal(blob, resolve_key(key), MAGIC, FORMAT_VERSION, what)
    try:
        content = json.loads(plaintext)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{what} holds no valid JSON ({error})") from None
    return Checkpoint.from_json(content, what)


def check_config(
    saved: dict[str, Any], current: dict[str, Any], path: Path, *, ignore: tuple[str, ...] = ()
) -> None:
    """Refuse to resume a run whose settings differ, naming the first setting that does (``ignore``:
    settings a resume may change, such as the budget)."""
    for name in sorted((set(saved) | set(current)) - set(ignore)):
        if saved.get(name) != current.get(name):
            raise CheckpointError(
                f"checkpoint {path} was written for another {name} "
                f"(checkpoint: {_short(saved.get(name))}, now: {_short(current.get(name))}); "
                "use the same settings or another --out folder"
            )


def resumable(path: Path, key: KeySpec, config: dict[str, Any], generations: int, popsize: int) -> Checkpoint:
    """The checkpoint at ``path`` if it continues a run of ``config`` (any budget it can reach), else a
    CheckpointError naming what differs or the budget it needs."""
    saved = load_checkpoint(path, key)
    check_config(saved.config, config, path, ignore=("budget", PLANNED_BUDGET))
    if generations < len(saved.state.generations):
        done = len(saved.state.generations) * popsize
        raise CheckpointError(
            f"checkpoint {path} already used {done} calls; --budget must be at least {done}"
        )
    return saved


def planned_budget(config: dict[str, Any]) -> int:
    """The budget a checkpoint's optimizer was built with (checkpoints before extension: its budget)."""
    return int(config.get(PLANNED_BUDGET, config["budget"]))


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _canonical(value: Any) -> Any:
    """JSON round trip, so a live state compares equal to the same state read back from a checkpoint."""
    return json.loads(json.dumps(value, sort_keys=True))
