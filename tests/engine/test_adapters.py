"""Adapter registry, BBT's projection scale, and the CBP generator's on-disk format."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cbpt.common.registry import DuplicateName, UnknownName
from cbpt.server.adapters import ADAPTER_METHODS, Adapter, AdapterSpec, random_projection, register
from cbpt.server.adapters.cbp import CustomizedBlackBoxPrompt
from cbpt.server.adapters.generator import GeneratorConfig, PromptGenerator
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.adapters.spec import build_adapters
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.errors import AdapterSpecError, GeneratorFormatError, ModelMismatch
from cbpt.server.testing import tiny_bundle, tiny_generator


def test_registry_has_builtins_and_refuses_duplicates():
    assert {"none", "bbt", "cbp"} <= set(ADAPTER_METHODS)

    class Again(Adapter):
        method = "bbt"

        def soft_prompts(self, z, pooled_inputs):
            raise NotImplementedError

    with pytest.raises(DuplicateName, match="already registered"):
        register(Again)
    with pytest.raises(UnknownName, match=r"unknown adapter method 'bbtv9'; known: .*bbt.*cbp"):
        ADAPTER_METHODS["bbtv9"]


class _Shift(Adapter):
    """A throwaway method: one learned-free vector z added onto the cue, nothing else."""

    method = "test-shift"

    @classmethod
    def from_spec(cls, spec, bundle):
        return cls(spec.name or cls.method, spec.dimension, 1, placement=spec.placement)

    def soft_prompts(self, z, pooled_inputs):
        width = pooled_inputs.shape[-1]
        return torch.nn.functional.pad(z, (0, width - z.shape[-1]))[:, None, :]


def test_a_new_method_is_one_class_and_one_spec():
    """Registered in a test and named by a spec, it is served without touching the runtime."""
    register(_Shift)
    try:
        bundle = tiny_bundle(0)
        spec = AdapterSpec(method="test-shift", name="shift", placement="on_cue", dimension=4)
        engine = ScoringEngine(bundle, ServedAdapters(specs=[spec], shipped_generators=False).build(bundle))
        assert [a.name for a in engine.info().adapters] == ["shift"]
        texts, choices = ["Review: fine", "Review: awful"], [" positive", " negative"]
        zero = engine.score(ScoreRequest("shift", np.zeros((1, 4), np.float32), texts, choices, cue="\nS:"))
        moved = engine.score(
            ScoreRequest("shift", np.full((1, 4), 3, np.float32), texts, choices, cue="\nS:")
        )
        assert not np.allclose(zero.log_probs, moved.log_probs)
    finally:
        ADAPTER_METHODS.unregister("test-shift")


def test_specs_name_unknown_methods_and_repeated_names():
    bundle = tiny_bundle(0)
    with pytest.raises(AdapterSpecError, match=r"adapters\[1\]: unknown adapter method 'bbtx'; known: "):
        build_adapters(bundle, [AdapterSpec(method="none"), AdapterSpec(method="bbtx")])
    with pytest.raises(AdapterSpecError, match="repeated: none"):
        build_adapters(bundle, [AdapterSpec(method="none"), AdapterSpec(method="none")])
    with pytest.raises(AdapterSpecError, match="needs a generator folder"):
        build_adapters(bundle, [AdapterSpec(method="cbp", name="cbp-x")])


def test_projection_matches_bbt_scale_and_is_reproducible():
    projection = random_projection(500, 2000, embedding_std=0.1356, seed=7)
    assert projection.shape == (500, 2000)
    assert abs(float(projection.std()) - 0.1356 / math.sqrt(500)) < 2e-4
    torch.testing.assert_close(projection, random_projection(500, 2000, 0.1356, seed=7))
    assert not torch.equal(projection, random_projection(500, 2000, 0.1356, seed=8))


def test_generator_round_trip(tmp_path):
    bundle = tiny_bundle(0)
    generator = tiny_generator(bundle, dimension=12, prompt_length=3)
    with torch.no_grad():
        generator.z0.normal_()
    generator.save(tmp_path / "gen")
    assert json.loads((tmp_path / "gen" / "generator.json").read_text())["format_version"] == 2
    loaded = CustomizedBlackBoxPrompt.from_folder(tmp_path / "gen", bundle.fingerprint)
    assert loaded.name == "cbp-test" and loaded.dimension == 12 and loaded.prompt_length == 3
    z = torch.randn(5, 12)
    pooled = torch.randn(5, bundle.hidden_size)
    torch.testing.assert_close(loaded.soft_prompts(z, pooled), generator(z, pooled))
    assert loaded.soft_prompts(z, pooled).shape == (5, 3, bundle.hidden_size)


def test_generator_for_another_model_is_refused(tmp_path):
    generator = tiny_generator(tiny_bundle(0), dimension=8, prompt_length=2)
    generator.save(tmp_path / "gen")
    with pytest.raises(ModelMismatch, match="built for model"):
        PromptGenerator.load(tmp_path / "gen", expected_fingerprint=tiny_bundle(1).fingerprint)


def test_incomplete_or_inconsistent_generator_is_refused(tmp_path):
    with pytest.raises(GeneratorFormatError, match=r"expected generator\.json"):
        PromptGenerator.load(tmp_path)
    generator = tiny_generator(tiny_bundle(0), dimension=8, prompt_length=2)
    generator.save(tmp_path / "gen")
    config = json.loads((tmp_path / "gen" / "generator.json").read_text())
    config["bottleneck"] = 99
    config["from_the_future"] = True
    (tmp_path / "gen" / "generator.json").write_text(json.dumps(config))
    with pytest.raises(GeneratorFormatError, match="do not match"):
        PromptGenerator.load(tmp_path / "gen")


def test_generator_computes_the_papers_formula_on_hand_set_weights():
    """p = L_U(GeLU(L_D(pooled + A (z0 + z)))), checked against numbers worked out by hand."""
    config = GeneratorConfig(
        "f" * 64, hidden_size=2, embedding_std=1.0, bottleneck=1, prompt_length=1, dimension=2
    )
    generator = PromptGenerator(config)
    with torch.no_grad():
        generator.projection.copy_(torch.eye(2))
        generator.z0.copy_(torch.tensor([1.0, 0.0]))
        generator.down.weight.copy_(torch.tensor([[1.0, 1.0]]))
        generator.down.bias.zero_()
        generator.up.weight.copy_(torch.tensor([[1.0], [2.0]]))
        generator.up.bias.zero_()
        pooled = torch.tensor([[0.5, -0.5]])
        # z = 0: L_D(0.5 + 1, -0.5 + 0) = 1.0; GeLU(1.0) = 0.841345
        at_zero = generator(torch.zeros(1, 2), pooled)
        # z = (0, 1): L_D(1.5, 0.5) = 2.0; GeLU(2.0) = 1.954500
        moved = generator(torch.tensor([[0.0, 1.0]]), pooled)
    torch.testing.assert_close(at_zero, torch.tensor([[[0.841345, 1.682690]]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(moved, torch.tensor([[[1.954500, 3.909000]]]), atol=1e-5, rtol=0)
