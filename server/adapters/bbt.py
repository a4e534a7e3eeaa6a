"""BBT (Sun et al., ICML 2022): the soft prompt is a fixed random projection A of z."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cbpt.server.adapters.base import Adapter, Placement, random_projection
from cbpt.server.adapters.registry import register

if TYPE_CHECKING:
    from cbpt.server.adapters.spec import AdapterSpec
    from cbpt.server.model import ModelBundle


@register
class BlackBoxTuning(Adapter):
    """prompt = reshape(z @ A, [t, d]) with A ~ N(0, emb_std / sqrt(r)) drawn from ``seed``."""

    method = "bbt"

    def __init__(
        self,
        hidden_size: int,
        embedding_std: float,
        *,
        name: str = "bbt",
        dimension: int = 500,
        prompt_length: int = 10,
        seed: int = 0,
        placement: Placement = Placement.PREFIX,
        description: str = "",
    ) -> None:
        where = {
            Placement.PREFIX: "prepended to the input",
            Placement.BEFORE_CUE: "placed before the answer cue",
            Placement.ON_CUE: "added onto the answer cue (z = 0 is zero-shot)",
        }[Placement(placement)]
        description = description or f"BBT: soft prompt = A z, {where}"
        super().__init__(name, dimension, prompt_length, description=description, placement=placement)
        self.hidden_size = hidden_size
        self.projection = random_projection(dimension, prompt_length * hidden_size, embedding_std, seed)

    @classmethod
    def from_spec(cls, spec: AdapterSpec, bundle: ModelBundle) -> BlackBoxTuning:
        return cls(
            bundle.hidden_size,
            bundle.embedding_std,
            name=spec.name or cls.method,
            dimension=spec.dimension,
            prompt_length=spec.prompt_length,
            seed=spec.seed,
            placement=spec.placement,
            description=spec.description,
        )

    def to(self, device: torch.device, dtype: torch.dtype) -> BlackBoxTuning:
        self.projection = self.projection.to(device=device, dtype=dtype)
        return self

    def soft_prompts(self, z: torch.Tensor, pooled_inputs: torch.Tensor) -> torch.Tensor:
        prompts = z.to(self.projection.dtype) @ self.projection
        return prompts.view(z.shape[0], self.prompt_length, self.hidden_size)
