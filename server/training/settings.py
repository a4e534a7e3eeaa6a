"""How a prompt generator is trained: every option of ``cbpt-server train-generator``, validated once."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cbpt.server.adapters.placement import Placement

ZMode = Literal["zero", "noise", "task"]
Schedule = Literal["cosine", "linear", "constant"]


class TrainSettings(BaseModel):
    """Saved with the run and in generator.json; a resume must use the same settings.

    ``z_mode``: how the client's vector z is treated while training. ``zero``: z = 0, only z0 and
    the generator learn. ``noise``: z drawn around 0 with ``z_sigma``, so the neighbourhood CMA-ES
    later searches stays useful. ``task``: a learned vector per training task (plus ``z_sigma``
    noise), so that moving z moves between tasks of the domain.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(2000, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="training examples per step (one task per step)")
    z_samples: int = Field(2, ge=1, description="z vectors per step; each text is encoded once for all")
    learning_rate: float = Field(1e-3, gt=0, description="AdamW peak learning rate")
    schedule: Schedule = Field("cosine", description="cosine, linear or constant, after the warm-up")
    warmup_steps: int = Field(50, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay")
    seed: int = Field(0, description="data order, dev splits, z noise and initialisation")
    bottleneck: int = Field(256, ge=1, description="m: the width of L_D")
    prompt_length: int = Field(10, ge=1, description="t: soft-prompt vectors")
    dimension: int = Field(500, ge=1, description="r: the length of z")
    projection_seed: int = Field(0, description="seed of the fixed random projection A")
    placement: Placement = Field(Placement.ON_CUE, description="on_cue, before_cue or prefix (the paper)")
    z_mode: ZMode = Field("noise", description="zero, noise or task: how z is treated in training")
    z_sigma: float = Field(0.5, ge=0, description="spread of z around z0 (noise and task modes)")
    init_prompt: str = Field(
        " Answer with one word.", description="token embeddings an inserted prompt starts from (not on_cue)"
    )
    eval_every: int = Field(100, ge=1, description="steps between dev evaluations (and generator snapshots)")
    checkpoint_every: int = Field(25, ge=1, description="steps between resumable checkpoints")
    max_minutes: float | None = Field(None, gt=0, description="stop (resumably) after this much wall time")

    @model_validator(mode="after")
    def _zero_needs_one_sample(self) -> TrainSettings:
        if self.z_mode == "zero" and self.z_samples != 1:
            object.__setattr__(self, "z_samples", 1)  # every sample would be the same z = 0
        return self
