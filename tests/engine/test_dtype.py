"""The engine's ``dtype``: bfloat16 is opt-in on CPU, runs every placement, and the model id says so."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.model import ModelLoadError, cpu_runs_bf16_natively, load_model
from cbpt.server.recipe import EngineSettings
from cbpt.server.testing import tiny_bundle

TEXTS = ["Review: great movie", "Review: bad", "Review: a much longer review that forces some padding"]
CHOICES = [" positive", " negative"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("dtype") / "model"
    original = tiny_bundle(5)
    original.model.save_pretrained(path)
    original.tokenizer.save_pretrained(path)
    return path


def _scores(bundle, adapter: str) -> np.ndarray:
    engine = ScoringEngine(bundle, ServedAdapters(bbt_dimension=4, shipped_generators=False).build(bundle))
    vectors = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    vectors = vectors if adapter != "none" else np.zeros((1, 0), np.float32)
    return engine.score(ScoreRequest(adapter, vectors, TEXTS, CHOICES, cue="\nSentiment:")).log_probs


def test_bfloat16_serves_every_placement_close_to_float32_and_names_itself(folder):
    reference = EngineSettings(model=str(folder), device="cpu", threads=1).load_model()
    halved = EngineSettings(model=str(folder), device="cpu", threads=1, dtype="bfloat16").load_model()
    assert reference.dtype == torch.float32 and reference.model_id == str(folder)
    assert {p.dtype for p in halved.model.parameters()} == {torch.bfloat16}
    assert halved.model_id == f"{folder}+bfloat16"  # a tuned vector's card says which scores it saw
    assert halved.fingerprint == reference.fingerprint  # the same weights: generators and vectors still match
    for adapter in ("none", "bbt", "bbt-suffix", "bbt-cue"):
        expected, actual = _scores(reference, adapter), _scores(halved, adapter)
        assert actual.dtype == np.float32 and np.isfinite(actual).all()
        assert not np.allclose(actual, expected, atol=1e-6), adapter  # it really runs in bfloat16
        np.testing.assert_allclose(actual, expected, atol=0.1, err_msg=adapter)


def test_float32_asked_for_names_nothing_extra(folder):
    loaded = load_model(str(folder), device="cpu", threads=1, dtype=torch.float32)
    assert loaded.model_id == str(folder)


def test_int8_on_bfloat16_is_refused_naming_the_fields():
    with pytest.raises(ValidationError, match="quantize int8 converts float32 weights: set dtype float32"):
        EngineSettings(quantize="int8", dtype="bfloat16")
    with pytest.raises(ValidationError, match="dtype"):
        EngineSettings(dtype="int4")
    with pytest.raises(ModelLoadError, match=r"converts float32 weights, not torch\.bfloat16"):
        load_model("no-such-model", quantize="int8", dtype=torch.bfloat16)  # before any weight is read


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu avx512f amx_bf16 amx_tile", True), ("fpu avx512f avx512_bf16", True), ("fpu avx2 fma", False)],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: some cpu\nflags\t\t: {flags}\n\n")
    assert cpu_runs_bf16_natively(cpuinfo) is expected


def test_unreadable_cpu_flags_say_unknown(tmp_path):
    assert cpu_runs_bf16_natively(tmp_path / "absent") is None
    (tmp_path / "no-flags").write_text("processor\t: 0\n")
    assert cpu_runs_bf16_natively(tmp_path / "no-flags") is None


def test_bfloat16_on_a_cpu_without_bf16_hardware_is_served_with_a_warning(folder, monkeypatch, caplog):
    monkeypatch.setattr("cbpt.server.model.cpu_runs_bf16_natively", lambda: False)
    with caplog.at_level("WARNING", logger="cbpt.server.model"):
        loaded = load_model(str(folder), device="cpu", threads=1, dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    assert "runs several times slower than float32" in caplog.text
    caplog.clear()
    monkeypatch.setattr("cbpt.server.model.cpu_runs_bf16_natively", lambda: True)
    with caplog.at_level("WARNING", logger="cbpt.server.model"):
        load_model(str(folder), device="cpu", threads=1, dtype=torch.bfloat16)
    assert "slower" not in caplog.text


def test_train_generator_dtype_names_map_as_the_engine_setting_does():
    from cbpt.server.errors import ConfigError
    from cbpt.server.training.command import train_dtype

    assert train_dtype("auto") is None and train_dtype("float32") is torch.float32
    assert train_dtype("bfloat16") is torch.bfloat16 and train_dtype("float16") is torch.float16
    with pytest.raises(ConfigError, match="--dtype 'int4': expected one of float32, bfloat16, float16, auto"):
        train_dtype("int4")
