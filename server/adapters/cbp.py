"""CBP-Tuning (EMNLP 2025): a domain prompt generator steered by the client's vector z."""

from __future__ import annotations

from pathlib import Path

import torch

from cbpt.server.adapters.base import Adapter
from cbpt.server.adapters.generator import PromptGenerator
from cbpt.server.adapters.registry import register


@register
class CustomizedBlackBoxPrompt(Adapter):
    method = "cbp"
    reads_inputs = True

    def __init__(self, generator: PromptGenerator, *, name: str = "cbp") -> None:
        config = generator.config
        super().__init__(
            name,
            dimension=config.dimension,
            prompt_length=config.prompt_length,
            domain=config.domain,
            description=config.description or "CBP-Tuning prompt generator",
        )
        self.generator = generator.eval().requires_grad_(False)

    @classmethod
    def from_folder(cls, folder: Path, fingerprint: str, name: str | None = None) -> CustomizedBlackBoxPrompt:
        generator = PromptGenerator.load(folder, expected_fingerprint=fingerprint)
        default_name = f"cbp-{generator.config.domain}" if generator.config.domain else "cbp"
        return cls(generator, name=name or default_name)

    def to(self, device: torch.device, dtype: torch.dtype) -> CustomizedBlackBoxPrompt:
        self.generator.to(device=device, dtype=dtype)
        return self

    def soft_prompts(self, z: torch.Tensor, pooled_inputs: torch.Tensor) -> torch.Tensor:
        return self.generator(z, pooled_inputs)
