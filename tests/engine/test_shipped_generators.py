"""Generators shipped in the package are served when trained for the loaded weights, skipped otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbpt.server.adapters import build_adapters
from cbpt.server.errors import ModelMismatch
from cbpt.server.runtime import SHIPPED_GENERATORS, served_specs, shipped_generator_specs
from cbpt.server.testing import tiny_bundle, tiny_generator


def test_only_generators_for_these_weights_are_picked(tmp_path: Path) -> None:
    mine, other = tiny_bundle(0), tiny_bundle(1)
    tiny_generator(mine, dimension=8, prompt_length=2).save(tmp_path / "mine")
    tiny_generator(other, dimension=8, prompt_length=2).save(tmp_path / "other")
    specs = shipped_generator_specs(mine.fingerprint, folder=tmp_path)
    assert [spec.generator for spec in specs] == [tmp_path / "mine"]
    adapters = build_adapters(mine, served_specs(generators=[]) + specs)
    assert adapters[-1].name == "cbp-test" and adapters[-1].method == "cbp"
    # Given explicitly, a generator for other weights is a mistake, and refused with a clear message.
    with pytest.raises(ModelMismatch, match="built for model"):
        build_adapters(mine, served_specs(generators=[tmp_path / "other"]))


def test_the_shipped_opinion_generator_is_complete_and_small() -> None:
    folder = SHIPPED_GENERATORS / "opinion"
    if not folder.is_dir():
        pytest.skip("no generator is shipped in this checkout")
    import json

    card = json.loads((folder / "generator.json").read_text())
    assert card["domain"] == "opinion" and card["placement"] in ("on_cue", "before_cue", "prefix")
    training = card["training"]
    assert (
        training["command"] and training["tasks"] and all(task["data_sha256"] for task in training["tasks"])
    )
    assert (folder / "generator.safetensors").stat().st_size < 10 * 1024 * 1024
