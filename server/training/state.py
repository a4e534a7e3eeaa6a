"""Resumable training state: tensors in safetensors, everything else in JSON; nothing pickled.

``state/step-N.safetensors`` holds the generator's parameters, the per-task vectors, AdamW's
moments and the torch RNG; ``state/state.json`` names that file and holds the step, the numpy
RNG, the history and the settings and domain it was written for, which a resume must match.
The tensors are written first and the JSON replaced atomically after, so a kill at any moment
leaves the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cbpt.common.files import write_atomic
from cbpt.server.errors import ConfigError

STATE_DIR = "state"
META = "state.json"


@dataclass
class TrainingState:
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    numpy_rng: dict[str, Any] = field(default_factory=dict)
    best_dev: float | None = None
    best_step: int | None = None
    examples_seen: int = 0
    train_seconds: float = 0.0
    positions: dict[str, int] = field(default_factory=dict)  # per task: where its shuffled order stands
    epochs: dict[str, int] = field(default_factory=dict)


def save_state(
    folder: Path,
    state: TrainingState,
    parameters: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    torch_rng: torch.Tensor,
    identity: dict[str, Any],
) -> None:
    target = folder / STATE_DIR
    target.mkdir(parents=True, exist_ok=True)
    tensors = {f"param.{name}": value.detach().cpu().contiguous() for name, value in parameters.items()}
    optim = optimizer.state_dict()
    index_to_name = dict(enumerate(parameters))
    for index, entry in optim["state"].items():
        for key, value in entry.items():
            tensors[f"optim.{index_to_name[index]}.{key}"] = (
                torch.as_tensor(value).detach().cpu().contiguous()
            )
    tensors["torch_rng"] = torch_rng.contiguous()
    name = f"step-{state.step}.safetensors"
    staging = target / f".{name}.tmp"
    save_file(tensors, str(staging), metadata={"step": str(state.step)})
    staging.replace(target / name)
    meta = {
        "identity": identity,
        "state": vars(state),
        "param_groups": optim["param_groups"],
        "tensors": name,
    }
    write_atomic(target / META, json.dumps(meta, indent=1) + "\n", mode=0o644)
    for old in target.glob("step-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_state(
    folder: Path,
    parameters: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    identity: dict[str, Any],
) -> tuple[TrainingState, torch.Tensor] | None:
    """Restore a run in ``folder`` (None if there is none); refuse one written for other settings."""
    target = folder / STATE_DIR
    if not (target / META).is_file():
        return None
    meta = json.loads((target / META).read_text(encoding="utf-8"))
    for key in sorted(set(identity) | set(meta["identity"])):
        if meta["identity"].get(key) != identity.get(key):
            raise ConfigError(
                f"{folder} holds a training run for another {key}; "
                "resume with the same command or use another --out"
            )
    tensors = load_file(str(target / meta["tensors"]))
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(tensors[f"param.{name}"])
    names = list(parameters)
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, slot = key.removeprefix("optim.").rsplit(".", 1)
            optim_state.setdefault(names.index(name), {})[slot] = value
    optimizer.load_state_dict({"state": optim_state, "param_groups": meta["param_groups"]})
    return TrainingState(**meta["state"]), tensors["torch_rng"]
