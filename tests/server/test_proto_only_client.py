"""A client generated at test time from tuning.proto alone (no cbpt import) talks to the server.

It runs in a separate interpreter so the committed stubs are never loaded:
the .proto, not our Python package, is the contract.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

PROTO = Path(__file__).resolve().parents[2] / "proto" / "cbpt" / "v1" / "tuning.proto"

CLIENT = r"""
import json, struct, sys
from pathlib import Path
from grpc_tools import protoc
import grpc_tools, grpc

work = Path(sys.argv[1])
include = str(Path(grpc_tools.__file__).parent / "_proto")
code = protoc.main(["protoc", f"-I{work}", f"-I{include}", f"--python_out={work}",
                    f"--grpc_python_out={work}", str(work / "tuning.proto")])
assert code == 0, code
sys.path.insert(0, str(work))
import tuning_pb2, tuning_pb2_grpc

with grpc.insecure_channel(sys.argv[2]) as channel:
    stub = tuning_pb2_grpc.TuningStub(channel)
    info = stub.GetServerInfo(tuning_pb2.GetServerInfoRequest(), timeout=20)
    bbt = next(a for a in info.adapters if a.name == "bbt")
    z = struct.pack(f"<{2 * bbt.dimension}f", *([0.1] * bbt.dimension + [-0.2] * bbt.dimension))
    request = tuning_pb2.EvaluateRequest(
        adapter="bbt", dimension=bbt.dimension, num_candidates=2, candidates=z,
        texts=["Review: a funny film\nSentiment:"],
        shared_choices=tuning_pb2.ChoiceList(choices=[" positive", " negative"]),
        mode=tuning_pb2.SCORING_MODE_FIRST_TOKEN,
    )
    response = stub.Evaluate(request, timeout=20)
    log_probs = struct.unpack(f"<{len(response.log_probs) // 4}f", response.log_probs)
print(json.dumps({
    "model_id": info.model_id, "dimension": bbt.dimension, "num_candidates": response.num_candidates,
    "num_examples": response.num_examples, "log_probs": log_probs,
    "cbpt_loaded": any(name.startswith("cbpt") for name in sys.modules),
}))
"""


def test_client_built_only_from_the_proto(target: str, tmp_path: Path) -> None:
    shutil.copy(PROTO, tmp_path / "tuning.proto")
    done = subprocess.run(
        [sys.executable, "-I", "-c", CLIENT, str(tmp_path), target],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["cbpt_loaded"] is False
    assert result["model_id"].startswith("tiny-llama")
    assert result["dimension"] == 16
    assert (result["num_candidates"], result["num_examples"]) == (2, 1)
    assert len(result["log_probs"]) == 4
    assert all(p < 0 for p in result["log_probs"])
