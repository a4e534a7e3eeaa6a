"""Helpers the benchmark scripts share: data loading, the machine's matmul reference, result files."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cbpt.server.engine.types import ScoreRequest

if TYPE_CHECKING:
    from cbpt.server.engine import ScoringEngine
    from cbpt.server.model import ModelBundle

ROOT = Path(__file__).resolve().parents[1]
CHOICES = [" negative", " positive"]  # the review-sentiment request the speed benchmarks time
CUE = "\nSentiment:"
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "datasets"


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def _flops_per_second(work: Callable[[], object], flops: float, device: str, seconds: float) -> float:
    """Run ``work`` (``flops`` each) repeatedly for about ``seconds``; synchronises on CUDA."""
    import torch

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(3):
        work()
    sync()
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        work()
        runs += 1
    sync()
    return flops * runs / (time.perf_counter() - started)


def matmul_flops(m: int, k: int, n: int, *, dtype=None, device: str = "cpu", seconds: float = 2.0) -> float:
    """Achieved FLOP/s of a plain [m, k] @ [k, n] matmul: the same-run reference for every ratio."""
    import torch

    a = torch.randn(m, k, dtype=dtype or torch.float32, device=device)
    b = torch.randn(k, n, dtype=dtype or torch.float32, device=device)
    return _flops_per_second(lambda: a @ b, 2.0 * m * k * n, device, seconds)


def layer_matmul_flops(
    config, *, rows: int = 2048, dtype=None, device: str = "cpu", seconds: float = 1.0
) -> float:
    """FLOP/s of one decoder layer's own projections (q, k, v, o, gate, up, down) on ``rows`` tokens.

    The plain matmuls of the forward pass's exact shapes, without attention, norms or activations:
    the "matmul of similar shape" a forward pass is measured against. ``config`` is a Hugging Face
    model config (hidden_size, intermediate_size, num_attention_heads, num_key_value_heads).
    """
    import torch
    from torch.nn.functional import linear

    hidden, inner = config.hidden_size, config.intermediate_size
    head = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    kv = head * getattr(config, "num_key_value_heads", config.num_attention_heads)
    shapes = [
        (hidden, hidden),
        (kv, hidden),
        (kv, hidden),
        (hidden, hidden),
        (inner, hidden),
        (inner, hidden),
    ]
    options = {"dtype": dtype or torch.float32, "device": device}
    x = torch.randn(rows, hidden, **options)
    h = torch.randn(rows, inner, **options)
    weights = [torch.randn(out, into, **options) for out, into in shapes]
    down = torch.randn(hidden, inner, **options)

    def layer() -> None:
        for weight in weights:
            linear(x, weight)
        linear(h, down)

    flops = 2.0 * rows * (sum(out * into for out, into in shapes) + hidden * inner)
    return _flops_per_second(layer, flops, device, seconds)


def sst2_texts(count: int, seed: int = 0) -> list[str]:
    """Unlabelled SST-2 dev sentences (the labels are not needed for speed)."""
    path = SHARED / "sst2" / "dev.jsonl"
    rows = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    picked = np.random.default_rng(seed).choice(len(rows), size=count, replace=False)
    return [rows[i] for i in picked]


def sst2_dev() -> tuple[list[str], np.ndarray]:
    """The whole SST-2 dev set as the speed benchmarks template it, with its labels (1: positive)."""
    rows = [json.loads(line) for line in (SHARED / "sst2" / "dev.jsonl").read_text().splitlines()]
    labels = np.array([row["label"] == "positive" for row in rows], dtype=np.int64)
    return [f"Review: {row['text']}" for row in rows], labels


def score_all(engine: ScoringEngine, adapter: str, vector: np.ndarray, texts: list[str]) -> np.ndarray:
    """One vector's log-probs over ``texts`` (CHOICES after CUE), in calls of the engine's largest size."""
    limit = engine.limits.max_examples
    parts = (texts[i : i + limit] for i in range(0, len(texts), limit))
    return np.concatenate(
        [engine.score(ScoreRequest(adapter, vector, part, CHOICES, cue=CUE)).log_probs[0] for part in parts]
    )


def write_json(name: str, payload: object) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2))
    return path


def write_text(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(text)
    return path


@dataclass
class Timing:
    """What one timed Evaluate measured."""

    seconds: float
    tokens: int
    sequences: int
    flops: float


def non_embedding_parameters(bundle: ModelBundle) -> int:
    model = bundle.model
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    return total - embedding.numel()


def time_call(engine: ScoringEngine, adapter: str, popsize: int, texts: list[str], params: int) -> Timing:
    dimension = engine.adapters[adapter].dimension
    candidates = np.random.default_rng(0).standard_normal((popsize, dimension)).astype(np.float32)
    request = ScoreRequest(adapter, candidates, texts, CHOICES, cue=CUE, scope="bench")
    # Warm-up with one candidate: the first call's one-off costs, and for adapters placed after the text
    # it fills the text-state cache as the first generation of a tuning run would.
    engine.score(ScoreRequest(adapter, candidates[:1], texts, CHOICES, cue=CUE, scope="bench"))
    started = time.perf_counter()
    result = engine.score(request)
    seconds = time.perf_counter() - started
    head = 2 * engine.bundle.hidden_size * len(CHOICES) * popsize * len(texts)
    return Timing(
        seconds,
        result.tokens_processed,
        popsize * len(texts),
        2.0 * params * result.tokens_processed + head,
    )
