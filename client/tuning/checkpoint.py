"""The tuner's checkpoint: JSON sealed with AES-GCM, written atomically after every generation.

It holds no pickled object. The optimizer is resumed by replay (see
optimizers/base.py): the checkpoint keeps each generation's losses and a digest
of the candidates asked, plus the history, the best candidate so far (its vector
a list of floats), the optimizer's JSON state (RNG state included) for a final check, and
the tuner's config, which a resume must match exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbpt.client.errors import CheckpointError
from cbpt.client.files.crypto import KeySpec, resolve_key, seal, unseal
from cbpt.client.optimizers import GenerationRecord
from cbpt.client.tuning.results import Candidate
from cbpt.common.files import write_atomic

MAGIC = b"CBPTCKPT"
FORMAT_VERSION = 1
KIND = "cbpt.tuner-checkpoint"


@dataclass
class Checkpoint:
    """Everything a tuner needs to continue a run exactly where it stopped."""

    config: dict[str, Any]
    generations: list[GenerationRecord] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: Candidate | None = None  # the best candidate so far (its JSON: the six keys of ``Candidate``)
    optimizer_state: dict[str, Any] = field(default_factory=dict)
    calls_used: int = 0
    progress: dict[str, Any] = field(default_factory=dict)  # dev evaluations, patience count, stop reason

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "config": self.config,
            "generations": [{"digest": g.digest, "losses": list(g.losses)} for g in self.generations],
            "history": self.history,
            "best": None if self.best is None else self.best.to_json(),
            "optimizer_state": self.optimizer_state,
            "calls_used": self.calls_used,
            "progress": self.progress,
        }

    @classmethod
    def from_json(cls, content: Any, what: str) -> Checkpoint:
        try:
            if content.get("kind") != KIND:
                raise CheckpointError(f"{what} is not a tuner checkpoint")
            return cls(
                config=dict(content["config"]),
                generations=[
                    GenerationRecord(str(g["digest"]), tuple(float(x) for x in g["losses"]))
                    for g in content["generations"]
                ],
                history=list(content["history"]),
                best=None if content["best"] is None else Candidate.from_json(content["best"]),
                optimizer_state=dict(content["optimizer_state"]),
                calls_used=int(content["calls_used"]),
                progress=dict(content["progress"]),
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


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."
