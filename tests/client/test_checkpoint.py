"""Encrypted, authenticated, atomic checkpoints: round trips, keys, tampering and foreign files."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest

from cbpt.client.errors import CheckpointError, KeyWarning
from cbpt.client.files.crypto import SecretKey, resolve_key, unseal
from cbpt.client.optimizers import GenerationRecord
from cbpt.client.tuning.checkpoint import (
    FORMAT_VERSION,
    MAGIC,
    Checkpoint,
    check_config,
    load_checkpoint,
    save_checkpoint,
)
from cbpt.client.tuning.results import Candidate
from cbpt.common.errors import CbptWarning


def _checkpoint() -> Checkpoint:
    return Checkpoint(
        config={"seed": 0, "optimizer": "cma", "task": "abc"},
        generations=[GenerationRecord("d" * 64, (0.6931471805599453, 0.1 + 0.2))],
        history=[{"generation": 0, "best_loss": 0.3}],
        best=Candidate(
            generation=0,
            vector=np.array([0.25, -1.5], dtype=np.float32),
            bias=None,
            train_loss=0.3,
            dev_metrics={"accuracy": 0.5, "loss": 0.69},
        ),
        optimizer_state={"rng": {"state": 2**100 + 7}},
        calls_used=2,
        progress={"stale": 0, "stop_reason": None},
    )


def test_round_trip_with_a_passphrase_keeps_floats_exact(tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoint.cbpt"
    save_checkpoint(path, _checkpoint(), "correct horse")
    loaded = load_checkpoint(path, "correct horse")
    assert loaded.to_json() == _checkpoint().to_json()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"optimizer" not in path.read_bytes()  # encrypted, not merely signed
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.cbpt"]  # no temporary left behind


def test_default_key_file_is_created_private(tmp_path: Path) -> None:
    key_file = Path(os.environ["CBPT_KEY_FILE"])
    assert not key_file.exists()
    save_checkpoint(tmp_path / "c.cbpt", _checkpoint())
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key_file.read_bytes()) == 32
    assert load_checkpoint(tmp_path / "c.cbpt").calls_used == 2
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    with pytest.raises(CheckpointError, match="failed authentication"):
        load_checkpoint(tmp_path / "c.cbpt", other)


@pytest.mark.parametrize("offset", [8, 11, 30, 40, -1])
def test_any_modified_byte_is_refused(tmp_path: Path, offset: int) -> None:
    path = tmp_path / "c.cbpt"
    save_checkpoint(path, _checkpoint(), "pw")
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError):
        load_checkpoint(path, "pw")


def test_wrong_passphrase_and_wrong_kind_of_key(tmp_path: Path) -> None:
    path = tmp_path / "c.cbpt"
    save_checkpoint(path, _checkpoint(), "pw")
    with pytest.raises(CheckpointError, match="wrong key, or the file was modified"):
        load_checkpoint(path, "not pw")
    with pytest.raises(CheckpointError, match="sealed with a passphrase"):
        load_checkpoint(path, bytes(32))


def test_foreign_files_are_refused_without_unpickling(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    pickled = tmp_path / "evil.cbpt"
    pickled.write_bytes(pickle.dumps(Boom()))
    plain_json = tmp_path / "plain.cbpt"
    plain_json.write_text(json.dumps(_checkpoint().to_json()))
    for path in (pickled, plain_json):
        with pytest.raises(CheckpointError, match="bad magic"):
            load_checkpoint(path, "pw")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.cbpt", "pw")


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.cbpt"
    save_checkpoint(path, _checkpoint(), "pw")
    blob = bytearray(path.read_bytes())
    blob[8:10] = (99).to_bytes(2, "big")
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(path, "pw")


def test_check_config_names_the_differing_setting(tmp_path: Path) -> None:
    saved = {"seed": 0, "popsize": 6, "optimizer": "cma"}
    check_config(saved, dict(saved), tmp_path)
    with pytest.raises(CheckpointError, match="another popsize"):
        check_config(saved, {**saved, "popsize": 8}, tmp_path)


def test_scrypt_runs_once_per_key_object(tmp_path: Path) -> None:
    key = SecretKey.from_passphrase("pw")
    for _ in range(3):
        save_checkpoint(tmp_path / "c.cbpt", _checkpoint(), key)
    assert len(key._derived) == 1


# -- the best candidate, typed ----------------------------------------------------------------------
# A checkpoint's "best" entry exactly as the tuner has written it since its first version.
OLD_BEST = {
    "generation": 3,
    "vector": [0.10000000149011612, -2.5, 1.0000000116860974e-07],  # float32 values, as the tuner wrote them
    "bias": [0.0, -0.023731870018155844],
    "train_loss": 0.6931471805599453,
    "dev_accuracy": 0.75,
    "dev_metrics": {
        "accuracy": 0.75,
        "macro_f1": 0.7333333333333334,
        "confusion_matrix": [[2, 0], [1, 1]],
        "num_examples": 4,
        "loss": 0.61,
    },
}


def test_a_typed_candidate_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    best = Candidate(
        generation=4,
        vector=rng.normal(size=16).astype(np.float32),
        bias=rng.normal(size=3),
        train_loss=0.1 + 0.2,
        dev_metrics={"accuracy": 0.5, "macro_f1": 0.4, "confusion_matrix": [[1, 1], [1, 1]], "loss": 0.7},
    )
    path = tmp_path / "c.cbpt"
    save_checkpoint(path, Checkpoint(config={"seed": 0}, best=best), "pw")
    loaded = load_checkpoint(path, "pw").best
    assert isinstance(loaded, Candidate) and loaded.generation == 4 and loaded.train_loss == 0.1 + 0.2
    assert loaded.vector.dtype == np.float32 and np.array_equal(loaded.vector, best.vector)
    assert (
        loaded.bias is not None and loaded.bias.dtype == np.float64 and np.array_equal(loaded.bias, best.bias)
    )
    assert loaded.dev_metrics == best.dev_metrics and loaded.dev_accuracy == 0.5
    assert load_checkpoint(path, "pw").to_json()["best"] == best.to_json()
    save_checkpoint(path, Checkpoint(config={"seed": 0}), "pw")
    assert load_checkpoint(path, "pw").best is None


def test_an_old_best_entry_loads_and_is_written_back_unchanged() -> None:
    content = {**_checkpoint().to_json(), "best": json.loads(json.dumps(OLD_BEST))}
    best = Checkpoint.from_json(content, "old checkpoint").best
    assert isinstance(best, Candidate) and best.generation == 3 and best.dev_accuracy == 0.75
    assert best.vector.dtype == np.float32 and best.vector.tolist() == OLD_BEST["vector"]
    assert best.bias is not None and best.bias.tolist() == OLD_BEST["bias"]
    assert json.dumps(best.to_json()) == json.dumps(OLD_BEST)  # same keys, order and numbers
    accuracy_only = {"vector": [0.25], "bias": None, "train_loss": 0.3, "dev_accuracy": 0.5}
    sparse = Candidate.from_json(accuracy_only)
    assert sparse.generation is None and sparse.dev_accuracy == 0.5 and sparse.bias is None


def test_the_tuner_writes_the_best_entry_in_the_old_shape(server: str, make_task, tmp_path: Path) -> None:
    from cbpt.client.rpc.sdk import TuningClient
    from cbpt.client.tuning.tuner import Tuner
    from cbpt.common.tasks.task import Task

    path = tmp_path / "run.cbpt"
    with TuningClient(server) as client:
        result = Tuner(
            client, Task.from_file(make_task()), budget=8, popsize=4, fit_bias=True, checkpoint=path
        ).run()
    _, plaintext = unseal(path.read_bytes(), resolve_key(None), MAGIC, FORMAT_VERSION, "checkpoint")
    best = json.loads(plaintext)["best"]
    assert list(best) == list(OLD_BEST)
    assert np.array_equal(np.asarray(best["vector"], np.float32), result.vector)
    assert best["bias"] == result.bias.tolist() and best["dev_metrics"] == result.dev_metrics


def test_a_key_file_others_can_read_warns_in_the_client_family(tmp_path: Path) -> None:
    key_file = tmp_path / "shared.key"
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o644)
    with pytest.warns(KeyWarning, match="readable by other users"):
        save_checkpoint(tmp_path / "c.cbpt", _checkpoint(), key_file)
    assert issubclass(KeyWarning, CbptWarning)
