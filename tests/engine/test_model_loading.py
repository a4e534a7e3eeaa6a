"""load_model: a local Hugging Face folder loads with the same weights, fingerprint and scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.model import ModelLoadError, load_model, weights_fingerprint
from cbpt.server.testing import tiny_bundle


def test_local_folder_loads_with_same_fingerprint_and_scores(tmp_path):
    original = tiny_bundle(3)
    original.model.save_pretrained(tmp_path / "model")
    original.tokenizer.save_pretrained(tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"), device="cpu", threads=1)
    assert loaded.model_id == str(tmp_path / "model")
    assert loaded.fingerprint == original.fingerprint == weights_fingerprint(loaded.model)
    assert not any(p.requires_grad for p in loaded.model.parameters())
    request = ScoreRequest(
        "none", np.zeros((1, 0), np.float32), ["Review: fine"], [[" positive", " negative"]]
    )
    expected = (
        ScoringEngine(original, ServedAdapters(bbt_dimension=4, shipped_generators=False).build(original))
        .score(request)
        .log_probs
    )
    actual = (
        ScoringEngine(loaded, ServedAdapters(bbt_dimension=4, shipped_generators=False).build(loaded))
        .score(request)
        .log_probs
    )
    np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_model(str(tmp_path / "nowhere"), device="cpu")


def test_fingerprint_changes_with_any_weight():
    bundle = tiny_bundle(0)
    before = weights_fingerprint(bundle.model)
    with torch.no_grad():
        next(bundle.model.parameters())[0, 0] += 1e-3
    assert weights_fingerprint(bundle.model) != before


def test_a_folder_of_pickled_weights_is_refused_before_loading(tmp_path):
    """Finding 10 of #22: ``--model`` loaded without ``use_safetensors=True``, so a folder's pickled
    ``pytorch_model.bin`` (which can run code when unpickled) was loaded."""
    original = tiny_bundle(3)
    folder = tmp_path / "model"
    original.model.save_pretrained(folder)  # transformers 5 writes safetensors only: pickle them by hand
    original.tokenizer.save_pretrained(folder)
    torch.save(original.model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(
        ModelLoadError, match=r"only safetensors weights are loaded \(it holds pytorch_model.bin"
    ):
        load_model(str(tmp_path / "model"), device="cpu", threads=1)


def test_threads_default_to_the_cores_this_process_may_use(tmp_path, monkeypatch):
    """A container pinned to one core of a bigger machine gets one torch thread, not one per machine core."""
    import os

    tiny = tiny_bundle(3)
    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    before = torch.get_num_threads()
    try:
        load_model(str(tmp_path / "model"), device="cpu")
        assert torch.get_num_threads() == 1
        monkeypatch.delattr(os, "sched_getaffinity")  # no affinity (not Linux): the machine's count
        load_model(str(tmp_path / "model"), device="cpu")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
