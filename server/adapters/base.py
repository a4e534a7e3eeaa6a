"""The adapter contract: how one server-side method turns a vector z into soft prompts."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from enum import Enum
from typing import ClassVar

import torch


class Placement(str, Enum):
    """Where the soft prompt goes among the input embeddings."""

    # Before the input text, as in BBT and the CBP-Tuning paper.
    PREFIX = "prefix"
    # After the input text, just before the answer cue: the text's keys and values do not
    # depend on the candidate, so the engine encodes each text once and reuses it.
    BEFORE_CUE = "before_cue"
    # Added to the answer cue's own token embeddings (the last prompt_length of them): nothing is
    # inserted, so z = 0 is exactly zero-shot, and texts are reused as for BEFORE_CUE.
    ON_CUE = "on_cue"


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
