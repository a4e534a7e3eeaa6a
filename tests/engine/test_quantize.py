"""Opt-in int8 dynamic quantisation: the engine runs on it and scores stay close to fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbpt.server.engine import ScoreRequest
from cbpt.server.model import ModelLoadError, load_model, quantize_int8
from cbpt.server.testing import tiny_engine

TEXTS = ["Review: great movie", "Review: bad", "Review: a much longer review that forces some padding"]


def test_int8_engine_scores_close_to_fp32():
    request = ScoreRequest("bbt", np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32),
                           TEXTS, [" positive", " negative"], cue="\nSentiment:")  # fmt: skip
    fp32 = tiny_engine(with_cbp=False).score(request).log_probs
    engine = tiny_engine(with_cbp=False)
    quantize_int8(engine.bundle.model)
    layer = engine.bundle.model.base_model.layers[0].self_attn.q_proj
    assert isinstance(layer, torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(engine.bundle.model.get_output_embeddings(), torch.nn.Linear)  # the head stays float
    int8 = engine.score(request).log_probs
    assert not np.allclose(int8, fp32, atol=1e-6)  # it really runs quantised
    np.testing.assert_allclose(int8, fp32, atol=0.05)


def test_unknown_quantisation_is_refused_before_loading():
    with pytest.raises(ModelLoadError, match="quantize must be one of none, int8"):
        load_model("no-such-model", quantize="int4")
