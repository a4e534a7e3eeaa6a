"""The committed stubs are exactly what the pinned grpcio-tools generates from tuning.proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "proto" / "cbpt" / "v1"
STUBS = ("tuning_pb2.py", "tuning_pb2.pyi", "tuning_pb2_grpc.py")


def _gen_proto():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stubs")
    _gen_proto().generate(out)
    return out / "cbpt" / "v1"


@pytest.mark.parametrize("name", STUBS)
def test_committed_stub_matches_the_proto(generated: Path, name: str) -> None:
    fresh = (generated / name).read_bytes()
    committed = (COMMITTED / name).read_bytes()
    assert fresh == committed, (
        f"{name} is stale: run `.venv/bin/python scripts/gen_proto.py` and commit the result"
    )
