"""Generators shipped in the package are served when trained for the loaded weights, skipped otherwise."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cbpt.server.adapters import served
from cbpt.server.adapters.generator import PromptGenerator
from cbpt.server.adapters.served import SHIPPED_GENERATORS, ServedAdapters
from cbpt.server.errors import ModelMismatch
from cbpt.server.recipe import EngineRecipe, EngineSettings
from cbpt.server.testing import tiny_bundle, tiny_generator


def test_only_generators_for_these_weights_are_picked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mine, other = tiny_bundle(0), tiny_bundle(1)
    tiny_generator(mine, dimension=8, prompt_length=2).save(tmp_path / "mine")
    tiny_generator(other, dimension=8, prompt_length=2).save(tmp_path / "other")
    monkeypatch.setattr(served, "SHIPPED_GENERATORS", tmp_path)
    chosen = ServedAdapters().chosen(mine.fingerprint)
    assert [spec.generator for spec in chosen.specs if spec.generator] == [tmp_path / "mine"]
    assert [name for name, _ in chosen.not_served] == ["other"]
    # The log names the folder left out (its adapter name would be another model's, or clash with one served).
    (skipped,) = [record for record in caplog.records if record.msg == "shipped generator not served"]
    assert (skipped.generator, skipped.reason) == ("other", "other-model")  # type: ignore[attr-defined]
    adapters = ServedAdapters().build(mine)
    assert adapters[-1].name == "cbp-test" and adapters[-1].method == "cbp"
    # Given explicitly, a generator for other weights is a mistake, and refused with a clear message.
    with pytest.raises(ModelMismatch, match="built for model"):
        ServedAdapters(generators=[tmp_path / "other"], shipped_generators=False).build(mine)
    # One both shipped and given is served once.
    assert len(ServedAdapters(generators=[tmp_path / "mine"]).build(mine)) == len(adapters)


SHIPPED = sorted(path.parent.name for path in SHIPPED_GENERATORS.glob("*/generator.json"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_generator_is_complete_and_small(name: str) -> None:
    """Each shipped folder is named after its domain (``<domain>`` for the bundled SmolLM2,
    ``<domain>-<model>`` for another model's), says how it was trained and stays under 10 MB."""
    import json

    folder = SHIPPED_GENERATORS / name
    card = json.loads((folder / "generator.json").read_text())
    assert name == card["domain"] or name.startswith(f"{card['domain']}-")
    assert card["placement"] in ("on_cue", "before_cue", "prefix") and card["base_model_fingerprint"]
    training = card["training"]
    assert (
        training["command"] and training["tasks"] and all(task["data_sha256"] for task in training["tasks"])
    )
    assert (folder / "generator.safetensors").stat().st_size < 10 * 1024 * 1024


def _shipped(bundle, folder: Path, domain: str) -> None:
    """Ship a generator for ``bundle`` as ``folder/domain`` (as a provider copies a trained one in)."""
    config = dataclasses.replace(tiny_generator(bundle, dimension=8, prompt_length=2).config, domain=domain)
    PromptGenerator(config).save(folder / domain)


def test_every_shipped_folder_is_served_or_listed_with_why_not(tmp_path: Path, monkeypatch) -> None:
    """A new folder under server/generators/ is served as cbp-<domain> with no new flag; one trained
    for another model (other weights and hidden size) or a broken one is left out, logged and listed."""
    from typer.testing import CliRunner

    from cbpt.server.cli import app

    mine, bigger = tiny_bundle(0), tiny_bundle(1, hidden_size=48)
    shipped = tmp_path / "generators"
    _shipped(mine, shipped, "opinion")
    _shipped(mine, shipped, "medical")  # a new domain: picked up by the scan
    _shipped(bigger, shipped, "financial")
    (shipped / "broken").mkdir()
    (shipped / "broken" / "generator.json").write_text("{}")
    monkeypatch.setattr(served, "SHIPPED_GENERATORS", shipped)
    model = tmp_path / "model"
    mine.model.save_pretrained(model)
    mine.tokenizer.save_pretrained(model)

    recipe = EngineRecipe(engine=EngineSettings(model=str(model), device="cpu"))
    engine = recipe.build()
    names = [adapter.name for adapter in engine.info().adapters]
    assert names[-2:] == ["cbp-medical", "cbp-opinion"]
    not_served = dict(engine.info().not_served)
    assert set(not_served) == {"financial", "broken"}
    assert "built for model" in not_served["financial"] and "(hidden size 48)" in not_served["financial"]
    assert "(hidden size 32)" in not_served["financial"]
    assert "expected generator.json and generator.safetensors" in not_served["broken"]

    result = CliRunner().invoke(app, ["info", "--model", str(model), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (
        "cbp-medical" in result.output
        and "not served  shipped generator financial: generator was" in result.output
    )
    engine = recipe.model_copy(update={"adapters": ServedAdapters(shipped_generators=False)}).build()
    assert not any(a.method == "cbp" for a in engine.info().adapters) and not engine.info().not_served


def test_a_generator_for_another_hidden_size_is_refused_by_name(tmp_path: Path) -> None:
    mine, bigger = tiny_bundle(0), tiny_bundle(1, hidden_size=48)
    _shipped(bigger, tmp_path, "financial")
    with pytest.raises(ModelMismatch, match=r"financial: generator was built for model \w+ "
                       r"\(hidden size 48\), this server runs \w+ \(hidden size 32\)"):  # fmt: skip
        ServedAdapters(generators=[tmp_path / "financial"], shipped_generators=False).build(mine)
    config = dataclasses.replace(tiny_generator(bigger, dimension=8, prompt_length=2).config,
                                 base_model_fingerprint=mine.fingerprint)  # fmt: skip
    PromptGenerator(config).save(tmp_path / "same-weights-other-size")  # a forged or corrupted card
    with pytest.raises(ModelMismatch, match="this server's model has hidden size 32"):
        ServedAdapters(generators=[tmp_path / "same-weights-other-size"], shipped_generators=False).build(
            mine
        )
