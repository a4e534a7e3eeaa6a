"""The bundled model is converted once into a shared cache, even by processes starting together."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from cbpt.server import model


def test_processes_sharing_the_cache_convert_the_bundled_model_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray replicas on one volume start together: one converts, the others wait and reuse it."""
    gguf = tmp_path / "bundle" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"weights")
    monkeypatch.setattr(model, "_bundled_gguf", lambda entry: gguf)
    conversions: list[Path] = []

    def convert(entry: object, gguf: Path, source_hash: str, folder: Path) -> str:
        conversions.append(folder)
        time.sleep(0.2)  # long enough for the others to arrive while it runs
        folder.mkdir(parents=True)
        meta = {"format": model.CONVERSION_FORMAT, "source_sha256": source_hash, "fingerprint": "f"}
        (folder / "cbpt.json").write_text(json.dumps(meta))
        return "f"

    monkeypatch.setattr(model, "_convert_bundled", convert)
    entry = next(iter(model.BUNDLED_MODELS.values()))
    results: list[tuple[Path, str, str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(model._converted_bundled(entry, tmp_path / "cache")))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(conversions) == 1
    assert len(results) == 3 and len(set(results)) == 1 and results[0][2] == "f"


def test_the_fingerprint_is_recomputed_on_load_and_a_changed_copy_is_converted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "Tenants" (#22), finding 9: before, the fingerprint came from the cache's record, so weights
    changed on the shared volume were served under the genuine fingerprint."""
    from cbpt.server.testing import tiny_bundle

    gguf = tmp_path / "bundle" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"weights")
    monkeypatch.setattr(model, "_bundled_gguf", lambda entry: gguf)
    genuine, tampered = tiny_bundle(0), tiny_bundle(1)
    conversions: list[Path] = []

    def convert(entry: object, gguf: Path, source_hash: str, folder: Path) -> str:
        conversions.append(folder)
        genuine.model.save_pretrained(folder)
        genuine.tokenizer.save_pretrained(folder)
        meta = {
            "format": model.CONVERSION_FORMAT,
            "source_sha256": source_hash,
            "fingerprint": genuine.fingerprint,
        }
        (folder / "cbpt.json").write_text(json.dumps(meta))
        return genuine.fingerprint

    monkeypatch.setattr(model, "_convert_bundled", convert)
    first = model.load_model("smollm2", cache_dir=tmp_path / "cache", device="cpu")
    assert first.fingerprint == genuine.fingerprint and len(conversions) == 1
    tampered.model.save_pretrained(conversions[0])  # new weights on the volume, the record left as it was
    loaded = model.load_model("smollm2", cache_dir=tmp_path / "cache", device="cpu")
    assert loaded.fingerprint == model.weights_fingerprint(loaded.model) == genuine.fingerprint
    assert len(conversions) == 2  # the changed copy was converted again
