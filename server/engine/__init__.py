"""The scoring engine: knows nothing of gRPC, so gRPC, training, benchmarks and Ray Serve share it.

    types        requests and results (torch-free: importing them loads no model)
    limits       what one request may ask for
    prepare      tokenising (cached, token limits checked) into a request ready to share forward passes
    batching     every batching knob and its default (``Batching``), one value
    plan         one row per (candidate, example[, choice]); length-sorted chunks
    strategies   how a chunk runs: full sequence | per-candidate prefix states (| text_states)
    text_states  per-text states: each text encoded once per key, every candidate packed after it
    packing      several rows after one cached state in one sequence, and the block-diagonal mask
    attention    grouped-query attention that never repeats keys and values per head
    kv           keys/values of cached sequences, and the forward over them (with or without grad)
    readout      the choice-token logits only
    scoring      ScoringEngine, tying them together

The names below load lazily, so ``cbpt.server.engine.types`` stays importable without torch.
"""

from __future__ import annotations

from cbpt.common.lazy import lazy_exports

_EXPORTS = {
    "ScoringEngine": "cbpt.server.engine.scoring",
    "leading_special_tokens": "cbpt.server.engine.prepare",
    "ScoreRequest": "cbpt.server.engine.types",
    "ScoreResult": "cbpt.server.engine.types",
    "ScoringMode": "cbpt.server.engine.types",
    "EngineInfo": "cbpt.server.engine.types",
    "Limits": "cbpt.common.limits",
}
__all__ = list(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
