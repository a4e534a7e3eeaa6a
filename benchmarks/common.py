"""Helpers the benchmark scripts share: data loading, the machine's matmul reference, result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
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


def matmul_flops(m: int, k: int, n: int, *, dtype=None, device: str = "cpu", seconds: float = 2.0) -> float:
    """Achieved FLOP/s of a plain [m, k] @ [k, n] matmul: the same-run reference for every ratio."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2.0 * m * k * n * runs / (time.perf_counter() - started)


def sst2_texts(count: int, seed: int = 0) -> list[str]:
    """Unlabelled SST-2 dev sentences (the labels are not needed for speed)."""
    path = SHARED / "sst2" / "dev.jsonl"
    rows = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    picked = np.random.default_rng(seed).choice(len(rows), size=count, replace=False)
    return [rows[i] for i in picked]


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
