"""The real `cbpt-server serve` process writes nothing a client sent: no file, no log line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np

from cbpt.client.rpc.sdk import TuningClient
from cbpt.common.net import free_port
from cbpt.server.front.probe import wait_until_serving
from cbpt.server.testing import tiny_bundle

SECRET_TEXT = "Review: my neighbour Zebulon Quartermaine owes me 4711 dollars"
SECRET_CHOICE = " xylophonic"


def _files(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


def test_serving_writes_no_file_and_logs_no_text(tmp_path):
    model_dir = tmp_path / "model"
    bundle = tiny_bundle(0)
    bundle.model.save_pretrained(model_dir)
    bundle.tokenizer.save_pretrained(model_dir)
    watched = tmp_path / "watched"
    for folder in ("home", "tmp", "cache", "cwd"):
        (watched / folder).mkdir(parents=True)
    before = _files(watched)
    env = os.environ | {
        "HOME": str(watched / "home"),
        "TMPDIR": str(watched / "tmp"),
        "CBPT_CACHE_DIR": str(watched / "cache"),
        "HF_HOME": str(watched / "cache" / "hf"),
    }
    port = free_port()
    command = [sys.executable, "-m", "cbpt.server.cli", "serve", "--model", str(model_dir), "--insecure",
               "--allow-no-auth", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "DEBUG"]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=watched / "cwd", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            wait_until_serving(channel, 120, service="", alive=lambda: server.poll() is None)
        with TuningClient(f"127.0.0.1:{port}") as client:
            dimension = client.info().adapter("bbt-suffix").dimension
            candidates = np.random.default_rng(0).standard_normal((2, dimension)).astype(np.float32)
            scores = client.evaluate(
                "bbt-suffix", candidates, [SECRET_TEXT], [" yes", SECRET_CHOICE], cue="\nA:"
            )
            assert np.isfinite(scores).all()
    finally:
        server.terminate()
        logs, _ = server.communicate(timeout=60)
    assert server.returncode == 0, logs
    assert "Evaluate" in logs, logs  # the call was logged (sizes and timings) ...
    assert "Zebulon" not in logs and "xylophonic" not in logs  # ... without its text or choices
    created = _files(watched) - before
    assert not created, f"the server wrote files: {sorted(map(str, created))}"
