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

from cbpt.client.errors import ArtifactError as ArtifactErrorInErrors
from cbpt.client.errors import ArtifactModified, ArtifactWarning, CheckpointError
from cbpt.client.files.artifacts import ArtifactError, load_tuned, save_tuned
from cbpt.client.tuning.results import HistoryRow, TuningResult
from cbpt.common.tasks.task import TaskFormat

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
    with pytest.raises(ArtifactModified, match="failed authentication: wrong key"):
        load_tuned(tmp_path, key="another passphrase")  # task.json's tag is checked before the vector
    with pytest.raises(CheckpointError, match="failed authentication"):
        load_tuned(tmp_path, key="another passphrase", verify=False)  # AES-GCM still refuses it


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


def test_a_folder_without_a_digest_is_refused(tmp_path: Path) -> None:
    """Deleting the digest was once a warning only: now the vector cannot be checked, so it is refused."""
    save_tuned(tmp_path, _result(), FORMAT)
    card = json.loads((tmp_path / "task.json").read_text())
    del card["vector_sha256"]
    (tmp_path / "task.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactModified, match="records no vector digest"):
        load_tuned(tmp_path)
    assert load_tuned(tmp_path, verify=False).vector.shape == (16,)  # the explicit opt-out


# -- keyed runs: task.json and the vector authenticated together (#22 finding 8) -------------------
def _edit_card(folder: Path, **changes: object) -> None:
    card = json.loads((folder / "task.json").read_text())
    card.update(changes)
    for name in [name for name, value in changes.items() if value is None]:
        del card[name]
    (folder / "task.json").write_text(json.dumps(card))


@pytest.mark.parametrize("encrypt", [True, False])
def test_a_keyed_run_authenticates_task_json_and_the_vector_together(tmp_path: Path, encrypt: bool) -> None:
    key = tmp_path / "run.key"
    save_tuned(tmp_path / "run", _result(), FORMAT, encrypt=encrypt, key=key)
    run = tmp_path / "run"
    assert load_tuned(run, key=key).format.choices == FORMAT.choices
    # Swapping the choices mapping (the digest never covered it) flips every prediction: refused.
    _edit_card(run, choices={"neg": " positive", "pos": " negative"})
    with pytest.raises(ArtifactModified, match="failed authentication"):
        load_tuned(run, key=key)
    save_tuned(run, _result(), FORMAT, encrypt=encrypt, key=key)
    with pytest.raises((ArtifactModified, CheckpointError)):
        load_tuned(run, key=tmp_path / "other.key")  # another key


def test_an_encrypted_run_cannot_be_pointed_at_a_plaintext_vector(tmp_path: Path) -> None:
    """With write access to the folder: a plaintext vector of one's choosing, task.json's vector_file and
    sha256 pointed at it, the flag cleared. It once loaded without the key; now it is refused."""
    key = tmp_path / "run.key"
    run, other = tmp_path / "run", tmp_path / "other"
    save_tuned(run, _result(), FORMAT, encrypt=True, key=key)
    forged = _result()
    save_tuned(other, type(forged)(**{**vars(forged), "vector": -forged.vector}), FORMAT)
    (run / "vector.safetensors").write_bytes((other / "vector.safetensors").read_bytes())
    digest = json.loads((other / "task.json").read_text())["vector_sha256"]
    _edit_card(run, vector_file="vector.safetensors", vector_sha256=digest)
    with pytest.raises(ArtifactModified, match="failed authentication"):
        load_tuned(run, key=key)
    # Stripping the authentication too (a downgrade to an unkeyed run) is refused, with the key or not.
    _edit_card(run, authentication=None)
    with pytest.raises(ArtifactModified, match="downgrade"):
        load_tuned(run, key=key)
    with pytest.raises(ArtifactModified, match="downgrade"):
        load_tuned(run)  # the sealed file is still there
    _edit_card(run, vector_encrypted=False)
    (run / "vector.safetensors.enc").unlink()
    with pytest.raises(ArtifactModified, match="downgrade"):
        load_tuned(run, key=key)  # whoever gives the key gets only a folder that key authenticated
    assert load_tuned(run).vector[0] == 1.0  # an unkeyed load: only a checksum, as docs/security.md says


_WRITE_ONE = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.client.test_artifacts import FORMAT, _result
from cbpt.client.files.artifacts import save_tuned
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
