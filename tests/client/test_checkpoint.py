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
from cbpt.client.tuning.results import Candidate, HistoryRow, StopReason
from cbpt.client.tuning.state import TuningState
from cbpt.common.errors import CbptWarning

# A checkpoint's JSON exactly as the tuner has written it since format version 1 (a run patience
# stopped after two generations of two candidates; the optimizer state cut short).
OLD_CHECKPOINT = {
    "kind": "cbpt.tuner-checkpoint",
    "config": {"adapter": "bbt", "budget": 8, "popsize": 2, "patience": 1, "optimizer_budget": 8},
    "generations": [
        {"digest": "a" * 64, "losses": [0.6931471805599453, 0.7]},
        {"digest": "b" * 64, "losses": [0.65, 1000000.0]},
    ],
    "history": [
        {
            "generation": 0,
            "calls_used": 2,
            "best_loss": 0.6931471805599453,
            "mean_loss": 0.6965735902799727,
            "train_accuracy": 0.5,
            "dev_accuracy": 0.75,
            "wall_seconds": 0.125,
            "elapsed_seconds": 0.125,
        },
        {
            "generation": 1,
            "calls_used": 4,
            "best_loss": 0.65,
            "mean_loss": 500000.325,
            "train_accuracy": 0.625,
            "dev_accuracy": 0.5,
            "wall_seconds": 0.25,
            "elapsed_seconds": 0.375,
        },
    ],
    "best": {
        "generation": 0,
        "vector": [0.25, -1.5],
        "bias": None,
        "train_loss": 0.6931471805599453,
        "dev_accuracy": 0.75,
        "dev_metrics": {"accuracy": 0.75, "loss": 0.61},
    },
    "optimizer_state": {"counteval": 4, "sigma": 0.9},
    "calls_used": 4,
    "progress": {"stale": 1, "stop_reason": "patience"},
}


def _checkpoint() -> Checkpoint:
    state = TuningState(
        generations=[GenerationRecord("d" * 64, (0.6931471805599453, 0.1 + 0.2))],
        history=[HistoryRow.from_json(OLD_CHECKPOINT["history"][0])],
        best=Candidate(
            generation=0,
            vector=np.array([0.25, -1.5], dtype=np.float32),
            bias=None,
            train_loss=0.3,
            dev_metrics={"accuracy": 0.5, "loss": 0.69},
        ),
        calls_used=2,
    )
    return Checkpoint(
        config={"seed": 0, "optimizer": "cma", "task": "abc"},
        state=state,
        optimizer_state={"rng": {"state": 2**100 + 7}},
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
    assert load_checkpoint(tmp_path / "c.cbpt").state.calls_used == 2
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
    save_checkpoint(path, Checkpoint(config={"seed": 0}, state=TuningState(best=best)), "pw")
    loaded = load_checkpoint(path, "pw").state.best
    assert isinstance(loaded, Candidate) and loaded.generation == 4 and loaded.train_loss == 0.1 + 0.2
    assert loaded.vector.dtype == np.float32 and np.array_equal(loaded.vector, best.vector)
    assert (
        loaded.bias is not None and loaded.bias.dtype == np.float64 and np.array_equal(loaded.bias, best.bias)
    )
    assert loaded.dev_metrics == best.dev_metrics and loaded.dev_accuracy == 0.5
    assert load_checkpoint(path, "pw").to_json()["best"] == best.to_json()
    save_checkpoint(path, Checkpoint(config={"seed": 0}), "pw")
    assert load_checkpoint(path, "pw").state.best is None


def test_an_old_best_entry_loads_and_is_written_back_unchanged() -> None:
    content = {**_checkpoint().to_json(), "best": json.loads(json.dumps(OLD_BEST))}
    best = Checkpoint.from_json(content, "old checkpoint").state.best
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


def test_a_version_1_checkpoint_loads_typed_and_is_written_back_unchanged() -> None:
    loaded = Checkpoint.from_json(json.loads(json.dumps(OLD_CHECKPOINT)), "old checkpoint")
    state = loaded.state
    assert state.stop_reason is StopReason.PATIENCE and state.stale == 1 and state.calls_used == 4
    assert [row.generation for row in state.history] == [0, 1] and state.history[1].dev_accuracy == 0.5
    assert state.generations[1] == GenerationRecord("b" * 64, (0.65, 1e6))
    assert json.dumps(loaded.to_json()) == json.dumps(OLD_CHECKPOINT)  # same keys, order and numbers
    running = {**OLD_CHECKPOINT, "progress": {"stale": 0, "stop_reason": None}}
    assert Checkpoint.from_json(running, "old checkpoint").state.stop_reason is None


def test_an_unknown_stop_reason_is_a_malformed_checkpoint_naming_the_field(tmp_path: Path) -> None:
    content = {**OLD_CHECKPOINT, "progress": {"stale": 1, "stop_reason": "bored"}}
    with pytest.raises(
        CheckpointError, match=r"progress\.stop_reason: unknown stop reason 'bored'; known: budget"
    ):
        Checkpoint.from_json(content, "checkpoint c.cbpt")


def test_a_key_file_others_can_read_warns_in_the_client_family(tmp_path: Path) -> None:
    key_file = tmp_path / "shared.key"
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o644)
    with pytest.warns(KeyWarning, match="readable by other users"):
        save_checkpoint(tmp_path / "c.cbpt", _checkpoint(), key_file)
    assert issubclass(KeyWarning, CbptWarning)
