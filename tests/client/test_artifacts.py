"""The tuned-task folder: safetensors + task.json + history, optional encryption, forward compatibility."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from cbpt.client.artifacts import ArtifactError, load_tuned, save_tuned
from cbpt.client.errors import ArtifactError as ArtifactErrorInErrors
from cbpt.client.errors import ArtifactModified, ArtifactWarning, CheckpointError
from cbpt.client.results import HistoryRow, TuningResult
from cbpt.client.task import TaskFormat

FORMAT = TaskFormat(template="Review: {text}\nSentiment:", choices={"neg": " negative", "pos": " positive"})


def _result(bias: bool = True) -> TuningResult:
    rows = tuple(
        HistoryRow(g, 4 * (g + 1), 0.7 - 0.1 * g, 0.8 - 0.1 * g, 0.5, 0.5 + 0.1 * g, 0.1, 0.1 * (g + 1))
        for g in range(3)
    )
    return TuningResult(
        vector=np.linspace(-1, 1, 16, dtype=np.float32),
        bias=np.array([0.0, 0.25]) if bias else None,
        history=rows,
        dev_metrics={
            "accuracy": 0.75,
            "macro_f1": 0.7,
            "confusion_matrix": [[1, 1], [0, 2]],
            "num_examples": 4,
        },
        train_loss=0.5,
        calls_used=12,
        stop_reason="budget",
        adapter="bbt",
        optimizer="cma",
        model_id="tiny",
        model_fingerprint="f" * 64,
        task={"name": "demo"},
        settings={"seed": 7, "popsize": 4},
    )


def test_round_trip(tmp_path: Path) -> None:
    notes = save_tuned(tmp_path / "out", _result(), FORMAT)
    assert notes == []
    for name in ("vector.safetensors", "task.json", "history.jsonl", "curve.png"):
        assert (tmp_path / "out" / name).is_file(), name
    tensors = load_file(tmp_path / "out" / "vector.safetensors")
    assert set(tensors) == {"vector", "bias"} and tensors["vector"].dtype == np.float32
    card = json.loads((tmp_path / "out" / "task.json").read_text())
    assert card["format_version"] == 1 and card["seed"] == 7 and card["calls_used"] == 12
    assert card["choices"] == {"neg": " negative", "pos": " positive"}
    tuned = load_tuned(tmp_path / "out")
    np.testing.assert_array_equal(tuned.vector, _result().vector)
    np.testing.assert_array_equal(tuned.bias, [0.0, 0.25])
    assert tuned.format == FORMAT and tuned.history == _result().history
    assert tuned.model_fingerprint == "f" * 64 and tuned.adapter == "bbt"


def test_no_bias_no_tensor(tmp_path: Path) -> None:
    save_tuned(tmp_path, _result(bias=False), FORMAT)
    assert set(load_file(tmp_path / "vector.safetensors")) == {"vector"}
    assert load_tuned(tmp_path).bias is None


def test_newer_versions_load_with_a_warning(tmp_path: Path) -> None:
    save_tuned(tmp_path, _result(), FORMAT)
    card = json.loads((tmp_path / "task.json").read_text())
    card.update(format_version=2, shiny_new_field={"x": 1})
    (tmp_path / "task.json").write_text(json.dumps(card))
    with pytest.warns(ArtifactWarning) as caught:
        tuned = load_tuned(tmp_path)
    messages = " ".join(str(w.message) for w in caught)
    assert "format_version 2" in messages and "shiny_new_field" in messages
    np.testing.assert_array_equal(tuned.vector, _result().vector)


def test_encrypted_vector(tmp_path: Path) -> None:
    save_tuned(tmp_path, _result(), FORMAT, encrypt=True, key="vector passphrase")
    assert not (tmp_path / "vector.safetensors").exists()
    assert b"vector" not in (tmp_path / "vector.safetensors.enc").read_bytes()
    tuned = load_tuned(tmp_path, key="vector passphrase")
    np.testing.assert_array_equal(tuned.vector, _result().vector)
    with pytest.raises(CheckpointError, match="failed authentication"):
        load_tuned(tmp_path, key="another passphrase")


def test_broken_folders(tmp_path: Path) -> None:
    assert ArtifactError is ArtifactErrorInErrors  # one class, importable from both modules
    with pytest.raises(ArtifactError, match=r"no task\.json"):
        load_tuned(tmp_path)
    save_tuned(tmp_path, _result(), FORMAT)
    (tmp_path / "vector.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ArtifactError, match=r"not the file task\.json recorded"):
        load_tuned(tmp_path)  # the digest check comes first ...
    with pytest.raises(ArtifactError, match="not a valid safetensors"):
        load_tuned(tmp_path, verify=False)  # ... and the parser still refuses garbage


# -- authenticated, deterministic vector files (Trust #6) ------------------------------------------
def test_a_flipped_bit_in_the_vector_file_is_refused(tmp_path: Path) -> None:
    save_tuned(tmp_path, _result(), FORMAT)
    path = tmp_path / "vector.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of the bias: still a valid safetensors file, silently scored before
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactModified, match=r"vector\.safetensors is not the file task\.json recorded"):
        load_tuned(tmp_path)
    assert load_tuned(tmp_path, verify=False).bias is not None  # the explicit opt-out


def test_a_folder_without_a_digest_loads_with_a_warning(tmp_path: Path) -> None:
    save_tuned(tmp_path, _result(), FORMAT)
    card = json.loads((tmp_path / "task.json").read_text())
    del card["vector_sha256"], card["partial"]  # as clients before the digest wrote it
    (tmp_path / "task.json").write_text(json.dumps(card))
    with pytest.warns(ArtifactWarning, match="records no vector digest"):
        load_tuned(tmp_path)


_WRITE_ONE = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.client.test_artifacts import FORMAT, _result
from cbpt.client.artifacts import save_tuned
save_tuned(Path(sys.argv[1]), _result(), FORMAT)
"""


def test_identical_saves_in_separate_processes_give_identical_bytes(tmp_path: Path) -> None:
    """safetensors' own writer ordered the metadata differently from one process to the next."""
    root = str(Path(__file__).resolve().parents[2])
    files = []
    for index in range(6):
        folder = tmp_path / f"run{index}"
        subprocess.run([sys.executable, "-c", _WRITE_ONE.format(root=root), str(folder)], check=True)
        files.append((folder / "vector.safetensors").read_bytes())
    assert all(data == files[0] for data in files)
    assert load_file(tmp_path / "run0" / "vector.safetensors")["vector"].dtype == np.float32
    with safe_open(str(tmp_path / "run0" / "vector.safetensors"), "np") as handle:
        assert handle.metadata() == {"adapter": "bbt", "format": "cbpt", "model_fingerprint": "f" * 64}
