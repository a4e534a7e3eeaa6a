"""Would a compiler close the rest of issue #24's gap? One on-cue generation, eager against inductor.

docs/capacity.md's profile puts the on-cue path's remaining time outside the matmuls in unfused
elementwise work (SiLU and the MLP's product, rotary embeddings, RMSNorm, residual additions). A
compiler that fuses it is the obvious next step, so this section (``--sections compiled`` of
benchmarks/throughput.py) measures it instead of assuming it: the same generation (``cbp-opinion``,
or ``bbt-cue`` where no generator is served, popsize 20 over 32 cached short texts) with the model

- ``eager``: as served;
- ``mlp+norms``: each layer's MLP and both RMSNorms through ``torch.compile`` (dynamic shapes);
- ``layers``: each whole decoder layer through ``torch.compile`` (dynamic shapes; the layer index
  unspecialised so the thirty layers share one graph).

The variants run interleaved (A, B, C, A, B, C; medians), each timed against a 2048³ matmul just
before it, after an untimed call that pays any compilation. Scores are compared with eager's.
The model is put back as it was at the end. Needs a C++ compiler (inductor's CPU backend).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from benchmarks.harness import CHOICES, CUE, matmul_flops, sst2_texts
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoreRequest, ScoringEngine
from cbpt.server.model import ModelBundle

POPSIZE = 20
REPEATS = 3


def _compile_parts(layer: torch.nn.Module) -> list[torch.nn.Module]:
    return [layer.mlp, layer.input_layernorm, layer.post_attention_layernorm]


Parts = Callable[[torch.nn.Module], list[torch.nn.Module]]  # the modules of a layer to compile

VARIANTS: dict[str, Parts | None] = {
    "eager": None,
    "mlp+norms": _compile_parts,
    "layers": lambda layer: [layer],
}


@contextmanager
def compiled(bundle: ModelBundle, parts: Parts | None) -> Iterator[None]:
    """The model with ``parts`` of each decoder layer compiled, put back as it was on leaving."""
    if parts is None:
        yield
        return
    modules = [module for layer in bundle.model.model.layers for module in parts(layer)]
    for module in modules:
        module.forward = torch.compile(module.forward, dynamic=True)  # an instance attribute
    try:
        with torch._dynamo.config.patch(allow_unspec_int_on_nn_module=True, cache_size_limit=64):
            yield
    finally:
        for module in modules:
            del module.forward  # the class's own forward again


def compiled_section(bundle: ModelBundle, params: int) -> list[dict[str, Any]]:
    """Seconds, matmul ratio and largest score difference from eager of each variant's generation."""
    engine = ScoringEngine(bundle, ServedAdapters().build(bundle))
    adapter = "cbp-opinion" if "cbp-opinion" in engine.adapters else "bbt-cue"
    texts = [f"Review: {text}" for text in sst2_texts(32, seed=0)]
    candidates = np.random.default_rng(0).standard_normal((POPSIZE, engine.adapters[adapter].dimension))
    request = ScoreRequest(adapter, candidates.astype(np.float32), texts, CHOICES, cue=CUE, scope="bench")
    engine.score(request)  # fills the text-state cache, as the first generation of a run does
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    scores: dict[str, np.ndarray] = {}
    tokens = 0
    for _ in range(REPEATS):
        for name, parts in VARIANTS.items():
            with compiled(bundle, parts):
                scores[name] = engine.score(request).log_probs  # untimed: pays any compilation
                square = matmul_flops(2048, 2048, 2048, seconds=1.0)
                seconds, tokens = _timed(engine, request)
                seen[name].append((seconds, square))
    torch._dynamo.reset()  # no compiled code outlives the section
    head = 2 * bundle.hidden_size * len(CHOICES) * POPSIZE * len(texts)
    flops = 2.0 * params * tokens + head
    eager = statistics.median(run[0] for run in seen["eager"])
    rows = []
    for name, runs in seen.items():
        seconds = statistics.median(run[0] for run in runs)
        rows.append({
            "variant": name, "adapter": adapter, "popsize": POPSIZE, "examples": len(texts),
            "seconds": seconds, "speedup": eager / seconds,
            "matmul_ratio": statistics.median(flops / run[0] / run[1] for run in runs),
            "max_score_difference": float(np.abs(scores[name] - scores["eager"]).max()),
        })  # fmt: skip
        row = rows[-1]
        print(f"compiled {name:9s}: {row['speedup']:.2f}x eager, {row['matmul_ratio']:.0%} of matmul, "
              f"scores within {row['max_score_difference']:.1e}", flush=True)  # fmt: skip
    return rows


def _timed(engine: ScoringEngine, request: ScoreRequest) -> tuple[float, int]:
    started = time.perf_counter()
    result = engine.score(request)
    return time.perf_counter() - started, result.tokens_processed
