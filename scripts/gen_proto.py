"""Regenerate the Python stubs from proto/cbpt/v1/tuning.proto.

The stubs are committed so that installing the client needs no protoc;
tests/test_proto_stubs.py fails when they drift from the .proto.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
PROTO_FILE = PROTO_ROOT / "cbpt" / "v1" / "tuning.proto"


def generate(out_dir: Path) -> None:
    """Write tuning_pb2.py, tuning_pb2.pyi and tuning_pb2_grpc.py under out_dir/cbpt/v1."""
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    (out_dir / "cbpt" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_FILE.relative_to(PROTO_ROOT)),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)
