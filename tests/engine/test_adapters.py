"""Adapter registry, BBT's projection scale, and the CBP generator's on-disk format."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cbpt.server.adapters import ADAPTER_METHODS, Adapter, adapter_class, random_projection, register
from cbpt.server.adapters.cbp import CustomizedBlackBoxPrompt
from cbpt.server.adapters.generator import GeneratorFormatError, PromptGenerator
from cbpt.server.errors import ModelMismatch
from cbpt.server.testing import tiny_bundle, tiny_generator


def test_registry_has_builtins_and_refuses_duplicates():
    assert {"none", "bbt", "cbp"} <= set(ADAPTER_METHODS)

    class Again(Adapter):
        method = "bbt"

        def soft_prompts(self, z, pooled_inputs):
            raise NotImplementedError

    with pytest.raises(ValueError, match="already registered"):
        register(Again)
    with pytest.raises(KeyError, match="known: bbt, cbp, none"):
        adapter_class("bbtv9")


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
    assert json.loads((tmp_path / "gen" / "generator.json").read_text())["format_version"] == 1
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


def test_z_zero_is_the_domain_prompt():
    """z0 is learned with G, so z = 0 reproduces the generator's trained prompt."""
    generator = tiny_generator(tiny_bundle(0), dimension=8, prompt_length=2)
    pooled = torch.randn(1, generator.config.hidden_size)
    with torch.no_grad():
        generator.z0.normal_()
        at_zero = generator(torch.zeros(1, 8), pooled)
        expected = generator.up(
            torch.nn.functional.gelu(generator.down(pooled + generator.z0 @ generator.projection))
        )
    torch.testing.assert_close(at_zero.reshape(1, -1), expected)
