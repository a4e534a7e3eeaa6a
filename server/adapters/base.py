"""The adapter contract: how one server-side method turns a vector z into soft prompts."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch

from cbpt.server.adapters.placement import Placement

if TYPE_CHECKING:
    from cbpt.server.adapters.spec import AdapterSpec
    from cbpt.server.model import ModelBundle


class Adapter(ABC):
    """A server-side method; its weights (A, z0, generators) never leave the server.

    ``soft_prompts`` receives one z row per sequence and the mean-pooled input
    embeddings of that sequence's text, and returns ``prompt_length`` vectors of
    the model's hidden size that the engine places where ``placement`` says.
    """

    method: ClassVar[str]
    # Whether soft_prompts reads pooled_inputs. When it does not (BBT), a prefix prompt is the same
    # for every example of a candidate, so the engine encodes it once per candidate and reuses it.
    reads_inputs: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        dimension: int,
        prompt_length: int,
        domain: str = "",
        description: str = "",
        placement: Placement = Placement.PREFIX,
    ) -> None:
        self.name = name
        self.placement = Placement(placement)
        self.dimension = dimension
        self.prompt_length = prompt_length
        self.domain = domain
        self.description = description

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: AdapterSpec, bundle: ModelBundle) -> Adapter:
        """Build this method's adapter on the loaded model, as the operator's spec says."""

    @abstractmethod
    def soft_prompts(self, z: torch.Tensor, pooled_inputs: torch.Tensor) -> torch.Tensor:
        """Map z [batch, dimension] and pooled inputs [batch, d] to prompts [batch, prompt_length, d]."""

    def to(self, device: torch.device, dtype: torch.dtype) -> Adapter:
        """Move the adapter's tensors next to the model; adapters without tensors need nothing."""
        return self


def random_projection(
    dimension: int, width: int, embedding_std: float, seed: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A fixed random projection [dimension, width] drawn as in BBT: N(0, embedding_std / sqrt(dimension)).

    With that scale a unit-variance z gives prompt entries whose spread matches
    the model's word embeddings, so CMA-ES can start at sigma0 = 1.
    """
    generator = torch.Generator().manual_seed(seed)
    scale = embedding_std / math.sqrt(dimension)
    return torch.randn(dimension, width, generator=generator, dtype=torch.float32).mul_(scale).to(dtype)
