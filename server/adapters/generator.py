"""The CBP-Tuning prompt generator and its on-disk format (safetensors + JSON config).

p = L_U(GeLU(L_D(mean_pool(Emb(X)) + A (z0 + z)))): a bottleneck network trained once per
domain by the provider; A is a fixed random projection (redrawn from its seed, never stored or
sent) and z0 a learned offset, so z = 0 means "the domain's trained prompt".

A generator folder holds ``generator.safetensors`` (L_D, L_U, z0) and ``generator.json``: the
config below (peft-style, with a ``format_version``; unknown keys load with a warning) and, under
``training``, how it was trained (domain, tasks and data hashes, metrics, the exact command).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cbpt.common.files import write_atomic
from cbpt.server.adapters.base import random_projection
from cbpt.server.adapters.placement import Placement
from cbpt.server.errors import GeneratorFormatError, ModelMismatch

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
CONFIG_FILE = "generator.json"
WEIGHTS_FILE = "generator.safetensors"
TRAINING_KEY = "training"


@dataclass(frozen=True)
class GeneratorConfig:
    base_model_fingerprint: str
    hidden_size: int
    embedding_std: float
    bottleneck: int = 256
    prompt_length: int = 10
    dimension: int = 500
    projection_seed: int = 0
    domain: str = ""
    description: str = ""
    placement: str = Placement.PREFIX.value  # where the engine puts the prompt
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        Placement(self.placement)  # refuse an unknown placement when the config is made

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> GeneratorConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known - {TRAINING_KEY})
        if unknown:
            log.warning("generator config has keys from a newer version, ignored: %s", ", ".join(unknown))
        if raw.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            log.warning("generator format_version %s is newer than %s", raw["format_version"], FORMAT_VERSION)
        try:
            return cls(**{key: value for key, value in raw.items() if key in known})
        except (TypeError, ValueError) as error:
            raise GeneratorFormatError(f"generator config is invalid: {error}") from None


class PromptGenerator(nn.Module):
    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        d, m = config.hidden_size, config.bottleneck
        projection = random_projection(config.dimension, d, config.embedding_std, config.projection_seed)
        self.projection: torch.Tensor  # A: fixed, never trained, never stored, never sent
        self.register_buffer("projection", projection, persistent=False)
        self.z0 = nn.Parameter(torch.zeros(config.dimension))
        self.down = nn.Linear(d, m)  # L_D
        self.up = nn.Linear(m, config.prompt_length * d)  # L_U

    def forward(self, z: torch.Tensor, pooled_inputs: torch.Tensor) -> torch.Tensor:
        """z [batch, r], pooled_inputs [batch, d] -> prompts [batch, t, d]."""
        shifted = pooled_inputs + (self.z0 + z.to(self.z0.dtype)) @ self.projection
        prompts = self.up(nn.functional.gelu(self.down(shifted)))
        return prompts.view(z.shape[0], self.config.prompt_length, self.config.hidden_size)

    @torch.no_grad()
    def start_at(self, prompt: torch.Tensor | None = None) -> PromptGenerator:
        """Make the output independent of the input: zero (on-cue: exactly zero-shot) or ``prompt`` [t, d]
        (inserted placements: real token embeddings), so training starts at zero-shot quality."""
        self.up.weight.zero_()
        self.up.bias.copy_(torch.zeros_like(self.up.bias) if prompt is None else prompt.reshape(-1))
        return self

    def save(self, folder: Path, training: dict[str, Any] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: tensor.detach().cpu().float().contiguous() for name, tensor in self.state_dict().items()
        }
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "cbpt-generator"})
        (folder / WEIGHTS_FILE).chmod(0o644)  # served by the image's non-root user from package data
        card: dict[str, Any] = dataclasses.asdict(self.config)
        if training is not None:
            card[TRAINING_KEY] = training
        write_atomic(folder / CONFIG_FILE, json.dumps(card, indent=2) + "\n", mode=0o644)

    @classmethod
    def load(
        cls, folder: Path, expected_fingerprint: str | None = None, expected_hidden_size: int | None = None
    ) -> PromptGenerator:
        """Load a generator; refuse one trained for a different base model."""
        config = read_config(folder)
        if reason := mismatch(config, expected_fingerprint, expected_hidden_size):
            raise ModelMismatch(f"{folder}: {reason}")
        weights_path = folder / WEIGHTS_FILE
        generator = cls(config)
        try:
            generator.load_state_dict(load_file(str(weights_path)), strict=True)
        except (RuntimeError, OSError) as exc:
            raise GeneratorFormatError(f"{folder}: weights do not match the config: {exc}") from None
        return generator


def read_config(folder: Path) -> GeneratorConfig:
    """The config of a complete generator folder (both files present), or GeneratorFormatError."""
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise GeneratorFormatError(f"{folder}: expected {CONFIG_FILE} and {WEIGHTS_FILE}")
    return GeneratorConfig.from_json(read_card(folder))


def mismatch(config: GeneratorConfig, fingerprint: str | None, hidden_size: int | None = None) -> str | None:
    """Why a generator cannot run on a model (other weights, another hidden size), or None if it can."""
    trained = f"model {config.base_model_fingerprint[:12]} (hidden size {config.hidden_size})"
    if fingerprint and config.base_model_fingerprint != fingerprint:
        size = "" if hidden_size is None else f" (hidden size {hidden_size})"
        return f"generator was built for {trained}, this server runs {fingerprint[:12]}{size}"
    if hidden_size is not None and config.hidden_size != hidden_size:
        return f"generator was built for {trained}, this server's model has hidden size {hidden_size}"
    return None


def read_card(folder: Path) -> dict[str, Any]:
    """The whole generator.json (config and training record)."""
    try:
        card = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GeneratorFormatError(f"{folder}: cannot read {CONFIG_FILE} ({error})") from None
    if not isinstance(card, dict):
        raise GeneratorFormatError(f"{folder}: {CONFIG_FILE} must hold an object")
    return card
