"""Zero-shot: no vector, no soft prompt. The baseline every method must beat."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cbpt.server.adapters.base import Adapter
from cbpt.server.adapters.registry import register

if TYPE_CHECKING:
    from cbpt.server.adapters.spec import AdapterSpec
    from cbpt.server.model import ModelBundle


@register
class NoPrompt(Adapter):
    method = "none"

    def __init__(self, name: str = "none", description: str = "zero-shot, no soft prompt") -> None:
        super().__init__(name, dimension=0, prompt_length=0, description=description)

    @classmethod
    def from_spec(cls, spec: AdapterSpec, bundle: ModelBundle) -> NoPrompt:
        return cls(spec.name or cls.method, spec.description or "zero-shot, no soft prompt")

    def soft_prompts(self, z: torch.Tensor, pooled_inputs: torch.Tensor) -> torch.Tensor:
        return pooled_inputs.new_zeros(pooled_inputs.shape[0], 0, pooled_inputs.shape[-1])
