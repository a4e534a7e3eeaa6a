"""The tuned-task folder: everything needed to predict later, and nothing a server could use.

    vector.safetensors    tensors "vector" (float32) and optional "bias" (float64, applied client-side)
                          (or vector.safetensors.enc: the same bytes sealed with AES-GCM), written
                          deterministically: identical runs give byte-identical files
    task.json             format_version, adapter, model id and fingerprint, template, choices, dev
                          metrics, calls used, optimizer, seed, the sha256 of the vector file, and
                          ``partial`` (true while a run is still going, or was killed) (peft-style:
                          unknown keys load with a warning)
    history.jsonl         one row per generation (appended while the run goes)
    curve.png             train loss and dev accuracy against calls (needs matplotlib)

A tuned vector only means something on the model it was tuned on, so scoring
against a server with another model fingerprint raises FingerprintMismatch; a vector
file that is not the one task.json recorded (a flipped bit, an edit) raises ArtifactModified.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_tensors

from cbpt.client.errors import ArtifactError, ArtifactModified, ArtifactWarning, FingerprintMismatch
from cbpt.client.files.crypto import KeySpec, SecretKey, authenticate, resolve_key, seal, unseal
from cbpt.client.files.crypto import verify as verify_record
from cbpt.client.files.tensor_file import tensor_bytes
from cbpt.client.rpc.batches import predict_in_batches
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.results import HistoryRow, TuningResult
from cbpt.common.files import write_atomic
from cbpt.common.info import ServerInfo
from cbpt.common.losses import apply_bias
from cbpt.common.tasks.task import Examples, TaskFormat
from cbpt.common.version import __version__

FORMAT_VERSION = 1
KIND = "cbpt.tuned-task"
VECTOR_FILE = "vector.safetensors"
SEALED_VECTOR_FILE = "vector.safetensors.enc"
VECTOR_MAGIC = b"CBPTVEC\x00"
HISTORY_FILE = "history.jsonl"
AUTHENTICATION = "authentication"
_REQUIRED = ("format_version", "adapter", "model_id", "model_fingerprint", "task_format", "dimension")
_KNOWN = frozenset(
    (
        *_REQUIRED,
        *(
            "kind",
            "task_name",
            "template",
            "choices",
            "class_names",
            "dev_metrics",
            "train_loss",
            "calls_used",
        ),
        *("optimizer", "seed", "settings", "stop_reason", "vector_file", "vector_encrypted", "has_bias"),
        *("task", "created_at", "client_version", "vector_sha256", "partial", "authentication"),
    )
)


def save_tuned(
    folder: Path,
    result: TuningResult,
    task_format: TaskFormat,
    *,
    encrypt: bool = False,
    key: KeySpec = None,
    partial: bool = False,
) -> list[str]:
    """Write the tuned-task folder; return notes for the user (e.g. a skipped plot).

    ``partial=True`` is the best-so-far save a running tuner makes after each generation: the
    vector and task.json (marked ``partial``) only, since history.jsonl is appended row by row
    (``RunRecorder``) and the curve is drawn once, at the end.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"vector": np.asarray(result.vector, dtype=np.float32)}
    if result.bias is not None:
        tensors["bias"] = np.asarray(result.bias, dtype=np.float64)
    metadata = {"format": "cbpt", "adapter": result.adapter, "model_fingerprint": result.model_fingerprint}
    payload = tensor_bytes(tensors, metadata)
    secret = resolve_key(key) if encrypt or key is not None else None  # a keyed run
    if encrypt:
        assert secret is not None
        payload = seal(payload, secret, VECTOR_MAGIC, FORMAT_VERSION)
        write_atomic(folder / SEALED_VECTOR_FILE, payload)
        (folder / VECTOR_FILE).unlink(missing_ok=True)
    else:
        write_atomic(folder / VECTOR_FILE, payload, mode=0o644)
        (folder / SEALED_VECTOR_FILE).unlink(missing_ok=True)
    card = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "adapter": result.adapter,
        "dimension": int(tensors["vector"].shape[0]),
        "model_id": result.model_id,
        "model_fingerprint": result.model_fingerprint,
        "task_name": result.task.get("name"),
        "template": task_format.template,
        "choices": task_format.choices,
        "class_names": list(task_format.class_names) if task_format.class_names else None,
        "task_format": task_format.format_spec(),
        "task": result.task,
        "dev_metrics": result.dev_metrics,
        "train_loss": result.train_loss,
        "calls_used": result.calls_used,
        "optimizer": result.optimizer,
        "seed": result.settings.get("seed"),
        "settings": result.settings,
        "stop_reason": result.stop_reason,
        "vector_file": SEALED_VECTOR_FILE if encrypt else VECTOR_FILE,
        "vector_encrypted": encrypt,
        "has_bias": result.bias is not None,
        "vector_sha256": hashlib.sha256(payload).hexdigest(),
        "partial": partial,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "client_version": __version__,
    }
    if secret is not None:  # task.json and the vector, bound together: neither can be swapped alone
        card[AUTHENTICATION] = authenticate(secret, _card_bytes(card), payload)
    write_atomic(folder / "task.json", (json.dumps(card, indent=2) + "\n").encode("utf-8"), mode=0o644)
    if partial:
        return []
    write_atomic(folder / HISTORY_FILE, history_lines(result.history).encode("utf-8"), mode=0o644)
    return _plot_curve(folder / "curve.png", result.history)


def history_lines(rows: tuple[HistoryRow, ...] | list[HistoryRow]) -> str:
    """history.jsonl's text: one JSON object per generation."""
    return "".join(json.dumps(row.to_json()) + "\n" for row in rows)


def _plot_curve(path: Path, history: tuple[HistoryRow, ...]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [f"{path.name} skipped: matplotlib is not installed (pip install 'cbp-tuning[plot]')"]
    calls = [row.calls_used for row in history]
    figure, (loss_axis, dev_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_axis.plot(calls, [row.best_loss for row in history], label="best")
    loss_axis.plot(calls, [row.mean_loss for row in history], label="mean", alpha=0.6)
    loss_axis.set(xlabel="calls used (candidate evaluations)", ylabel="train loss", title="train loss")
    loss_axis.legend()
    dev = [(row.calls_used, row.dev_accuracy) for row in history if row.dev_accuracy is not None]
    if dev:
        dev_axis.plot(*zip(*dev, strict=True), marker="o")
    dev_axis.set(xlabel="calls used (candidate evaluations)", ylabel="accuracy", title="dev accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return []


@dataclass(frozen=True)
class TunedTask:
    """A loaded tuned-task folder: the vector, the client-side bias, and how to template new inputs."""

    folder: Path
    vector: np.ndarray
    bias: np.ndarray | None
    adapter: str
    model_id: str
    model_fingerprint: str
    format: TaskFormat
    card: dict[str, Any]
    history: tuple[HistoryRow, ...]

    def check_server(self, client: TuningClient) -> ServerInfo:
        """The server's info, if it runs the model and adapter this vector was tuned for."""
        info = client.info()
        if info.model_fingerprint != self.model_fingerprint:
            raise FingerprintMismatch(
                f"{self.folder} was tuned on model {self.model_id} ({self.model_fingerprint[:12]}), "
                f"but server {client.target} runs {info.model_id} ({info.model_fingerprint[:12]})"
            )
        try:
            dimension = info.adapter(self.adapter).dimension
        except KeyError as error:
            raise FingerprintMismatch(f"server {client.target}: {error.args[0]}") from None
        if dimension != self.vector.shape[0]:
            raise FingerprintMismatch(
                f"adapter {self.adapter!r} on {client.target} takes {dimension} values; the vector has "
                f"{self.vector.shape[0]}"
            )
        return info

    @property
    def partial(self) -> bool:
        """The best-so-far vector of a run that has not finished (still going, or killed)."""
        return bool(self.card.get("partial"))

    def log_probs(
        self, client: TuningClient, examples: Examples, *, on_rows: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Log-probs [e, c] of every choice, the bias applied and renormalised on the client
        (``on_rows`` hears of each batch of rows scored)."""
        self.check_server(client)
        raw = predict_in_batches(
            client, self.adapter, self.vector, examples, self.format.mode, on_rows=on_rows
        )
        return apply_bias(raw, self.bias)


def read_card(folder: Path) -> dict[str, Any]:
    """A tuned folder's task.json (no key needed: it holds metrics and the format, never data)."""
    return _read_card(Path(folder) / "task.json")


def read_task_format(folder: Path) -> TaskFormat:
    """Just the task format of a tuned folder: enough to template a data file before any key is needed."""
    card = _read_card(Path(folder) / "task.json")
    try:
        return TaskFormat.model_validate(card["task_format"])
    except ValueError as error:
        raise ArtifactError(f"{folder}/task.json: task_format is invalid ({error})") from None


def load_tuned(folder: Path, *, key: KeySpec = None, verify: bool = True) -> TunedTask:
    """Read a tuned-task folder; ``key`` opens an encrypted vector (default: the default key file).

    A keyed run (an encrypted vector, or a key given when it was saved) carries an HMAC over
    task.json and the vector file together: it must verify under the key (ArtifactModified
    otherwise), so neither the vector, nor the choices, nor which file is the vector can be swapped.
    A folder without one loads only when it claims no encryption and no ``key`` is given (a
    downgrade of a keyed run to an unkeyed one is refused), and then only with the sha256 of its
    vector as task.json recorded: a check against accidents, not against someone who can write the
    folder (docs/security.md). ``verify=False`` skips both checks (AES-GCM still checks a sealed vector).
    """
    folder = Path(folder)
    card = _read_card(folder / "task.json")
    name = card.get("vector_file") or (SEALED_VECTOR_FILE if card.get("vector_encrypted") else VECTOR_FILE)
    path = folder / Path(str(name)).name
    try:
        payload = path.read_bytes()
    except OSError as error:
        raise ArtifactError(f"{folder}: cannot read {path.name} ({error.strerror})") from None
    sealed = path.name.endswith(".enc")
    secret = resolve_key(key) if sealed or key is not None or AUTHENTICATION in card else None
    if verify:
        _check_folder(folder, path, card, payload, secret, key_given=key is not None)
    if sealed:
        assert secret is not None
        _, payload = unseal(payload, secret, VECTOR_MAGIC, FORMAT_VERSION, f"encrypted vector {path}")
    try:
        tensors = load_tensors(payload)
    except Exception as error:  # safetensors raises its own error type for malformed bytes
        raise ArtifactError(f"{path} is not a valid safetensors file ({error})") from None
    if "vector" not in tensors or tensors["vector"].ndim != 1:
        raise ArtifactError(f"{path}: expected a 1-D tensor named 'vector'")
    vector = tensors["vector"].astype(np.float32)
    if vector.shape[0] != int(card["dimension"]):
        raise ArtifactError(
            f"{path}: vector has {vector.shape[0]} values, task.json says {card['dimension']}"
        )
    try:
        task_format = TaskFormat.model_validate(card["task_format"])  # the card just verified, not a re-read
    except ValueError as error:
        raise ArtifactError(f"{folder}/task.json: task_format is invalid ({error})") from None
    return TunedTask(
        folder=folder,
        vector=vector,
        bias=tensors["bias"].astype(np.float64) if "bias" in tensors else None,
        adapter=str(card["adapter"]),
        model_id=str(card["model_id"]),
        model_fingerprint=str(card["model_fingerprint"]),
        format=task_format,
        card=card,
        history=_read_history(folder / "history.jsonl"),
    )


def _card_bytes(card: dict[str, Any]) -> bytes:
    """task.json's content as authenticated: every field but the authentication record, canonical JSON."""
    fields = {name: value for name, value in card.items() if name != AUTHENTICATION}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _check_folder(
    folder: Path,
    path: Path,
    card: dict[str, Any],
    payload: bytes,
    secret: SecretKey | None,
    *,
    key_given: bool,
) -> None:
    hint = "re-run tuning, or pass --no-verify-vector to use it anyway"
    if AUTHENTICATION in card:
        assert secret is not None
        problem = verify_record(card[AUTHENTICATION], secret, _card_bytes(card), payload)
        if problem is not None:
            raise ArtifactModified(f"{folder}: task.json with {path.name}: {problem}; {hint}")
        return
    encrypted = (
        path.name.endswith(".enc") or card.get("vector_encrypted") or (folder / SEALED_VECTOR_FILE).exists()
    )
    if encrypted or key_given:
        what = "holds an encrypted vector" if encrypted else "was loaded with a key"
        raise ArtifactModified(
            f"{folder} {what} but task.json carries no authentication: a keyed run always does, so this one "
            f"was written without a key or had its authentication removed (a downgrade); {hint}"
        )
    recorded = card.get("vector_sha256")
    if recorded is None:
        raise ArtifactModified(
            f"{folder}/task.json records no vector digest, so {path.name} cannot be checked; {hint}"
        )
    if hashlib.sha256(payload).hexdigest() != recorded:
        raise ArtifactModified(
            f"{path} is not the file task.json recorded (sha256 differs): it was modified or replaced; {hint}"
        )


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path.parent} is not a tuned-task folder (no task.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"cannot read {path}: {error}") from None
    if not isinstance(card, dict) or (missing := [key for key in _REQUIRED if key not in card]):
        raise ArtifactError(f"{path} lacks {', '.join(missing) if isinstance(card, dict) else 'an object'}")
    if int(card["format_version"]) > FORMAT_VERSION:
        warnings.warn(
            f"{path} has format_version {card['format_version']}, newer than this client's {FORMAT_VERSION}; "
            "reading the fields it knows",
            ArtifactWarning,
            stacklevel=3,
        )
    if unknown := sorted(set(card) - _KNOWN):
        warnings.warn(f"{path}: ignoring unknown keys {', '.join(unknown)}", ArtifactWarning, stacklevel=3)
    return card


def _read_history(path: Path) -> tuple[HistoryRow, ...]:
    if not path.exists():
        return ()
    return read_history(path)


def read_history(path: Path) -> tuple[HistoryRow, ...]:
    """The rows of a history.jsonl; a last line cut short by a killed run is skipped."""
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(HistoryRow.from_json(json.loads(line)))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ArtifactError(f"{path}:{number}: not valid JSON") from None
    return tuple(rows)
