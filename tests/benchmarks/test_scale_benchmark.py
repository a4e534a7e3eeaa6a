"""The scale-out benchmark end to end on the tiny model: every backend and client count is measured,
the mixing arms are timed, and the report states the JSON's figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray", reason="the Ray backend needs the [ray] extra")


def test_scale_benchmark_measures_every_backend_and_reports(ray_session: Any, tmp_path: Path) -> None:
    from benchmarks import scale

    arguments = ["--model", "tiny", "--clients", "1,2", "--generations", "2", "--tenants", "2"]
    arguments += ["--popsize", "2", "--examples", "3", "--dimension", "16", "--prompt-length", "4"]
    scale.main([*arguments, "--repeats", "1", "--output", str(tmp_path / "scale")])
    payload = json.loads((tmp_path / "scale.json").read_text())
    rows = payload["clients"]["rows"]
    assert [(row["backend"], row["clients"]) for row in rows] == [
        (backend, clients) for clients in (1, 2) for backend in scale.BACKENDS
    ]
    assert all(row["calls"] == row["clients"] * 2 and row["sequences_per_second"] > 0 for row in rows)
    assert all(row["requests_per_engine_call"] >= 1 for row in rows if row["backend"] != "in-process")
    assert set(payload["clients"]["hop_ms"]) == set(scale.BACKENDS[1:3])
    mixing = payload["mixing"]
    assert mixing["sequences"] == 2 * 2 * 3 and len(mixing["tenant_latency_ms"]["one_at_a_time"]) == 2
    report = (tmp_path / "scale.md").read_text()
    assert f"| 2 tenants mixed (`bbt-cue`) | {mixing['ms_per_sequence']['mixed']:.3f} |" in report
    assert "overhead, not a speed-up" in report
    for row in rows:
        assert f"| {row['backend']} | {row['clients']} | {row['sequences_per_second']:.1f} |" in report
