"""CBP-Tuning (EMNLP 2025): a domain prompt generator steered by the client's vector z."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cbpt.server.adapters.base import Adapter
from cbpt.server.adapters.generator import PromptGenerator
from cbpt.server.adapters.registry import register
from cbpt.server.errors import AdapterSpecError

if TYPE_CHECKING:
    from cbpt.server.adapters.spec import AdapterSpec
    from cbpt.server.model import ModelBundle


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
            placement=config.placement,
        )
        self.generator = generator.eval().requires_grad_(False)

    @classmethod
    def from_folder(
        cls, folder: Path, fingerprint: str, name: str | None = None, hidden_size: int | None = None
    ) -> CustomizedBlackBoxPrompt:
        generator = PromptGenerator.load(folder, fingerprint, hidden_size)
        default_name = f"cbp-{generator.config.domain}" if generator.config.domain else "cbp"
        return cls(generator, name=name or default_name)

    @classmethod
    def from_spec(cls, spec: AdapterSpec, bundle: ModelBundle) -> CustomizedBlackBoxPrompt:
        if spec.generator is None:
            raise AdapterSpecError(
                f"adapter {spec.name or cls.method!r}: method 'cbp' needs a generator folder"
            )
        return cls.from_folder(Path(spec.generator), bundle.fingerprint, spec.name, bundle.hidden_size)

    def to(self, device: torch.device, dtype: torch.dtype) -> CustomizedBlackBoxPrompt:
        self.generator.to(device=device, dtype=dtype)
        return self

    def soft_prompts(self, z: torch.Tensor, pooled_inputs: torch.Tensor) -> torch.Tensor:
        return self.generator(z, pooled_inputs)
