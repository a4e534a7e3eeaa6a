"""What users wait for, before and after issue #24, side by side in one run (sections of
benchmarks/throughput.py).

- ``evaluate``: ``predict`` with one tuned on-cue vector (the main job's adapter) and the zero-shot
  ``evaluate``, on 1, 1k and 10k distinct texts, short and long, through gRPC (the SDK's
  ``predict_in_batches``) and through the CLI (``cbpt predict`` / ``cbpt evaluate --zero-shot``,
  run in this process against a loopback server). "before #24" is the engine's
  ``Batching.before_issue_24()`` with the client's ``RequestBatching.before_issue_24()`` (64 rows a
  request, one at a time); "now" is both defaults. Each run starts with an empty text-state cache.
- ``oncue``: one tuning generation on the on-cue placement (texts cached, as from the second
  generation on), popsize 1 to 40, both engines.
- ``ceiling``: the model's own plain forward (no padding, no cache) at pass shapes like the engine's,
  against the same matmul: what a forward pass of this model can reach on this machine at all.

Every figure is a ratio to a 2048³ matmul timed just before it, or a ratio of two runs interleaved
(A, B, A, B: medians), so drift and other load on the machine cancel as far as they can.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from typer.testing import CliRunner

from benchmarks.harness import SHARED, matmul_flops, sst2_texts, time_call
from cbpt.client.cli import app
from cbpt.client.files.artifacts import save_tuned
from cbpt.client.rpc import batches
from cbpt.client.rpc.batches import RequestBatching, predict_in_batches
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.results import TuningResult
from cbpt.common.tasks.fitting import fit_examples
from cbpt.common.tasks.task import Task
from cbpt.server.adapters.served import ServedAdapters
from cbpt.server.engine import ScoringEngine
from cbpt.server.engine.batching import Batching
from cbpt.server.engine.kv import TextStateCache
from cbpt.server.front.app import serve_in_background
from cbpt.server.model import ModelBundle

TEMPLATE = "Review: {text}\nSentiment:"
CHOICES = {"negative": " negative", "positive": " positive"}
ENGINES = {"before #24": Batching.before_issue_24(), "now": Batching()}
CLIENTS = {"before #24": RequestBatching.before_issue_24(), "now": RequestBatching()}


def served_engine(bundle: ModelBundle, batching: Batching) -> ScoringEngine:
    """The default server's adapters (shipped generators included) on ``bundle``."""
    return ScoringEngine(bundle, ServedAdapters().build(bundle), batching=batching)


def review_texts(length: str, count: int) -> list[dict[str, str]]:
    """Distinct labelled SST-2 train rows: ``short`` one sentence of 8+ words (about 25 tokens),
    ``long`` several joined to about 600 characters (about 130 tokens)."""
    rows = [json.loads(line) for line in (SHARED / "sst2" / "train.jsonl").read_text().splitlines()]
    rows = [row for row in rows if len(row["text"].split()) >= 8]
    order = np.random.default_rng(0).permutation(len(rows))
    if length == "short":
        return [{"text": rows[i]["text"], "label": rows[i]["label"]} for i in order[:count]]
    picked, start = [], 0
    for _ in range(count):
        parts: list[str] = []
        while sum(map(len, parts)) < 600:
            parts.append(rows[order[start % len(order)]]["text"])
            start += 1
        picked.append({"text": " ".join(parts), "label": rows[order[start - 1]]["label"]})
    return picked


class Workspace:
    """A task file, a tuned folder for the on-cue adapter and one data file per (length, size)."""

    def __init__(self, root: Path, bundle: ModelBundle, adapter: str, dimension: int) -> None:
        self.root = root
        self.task = root / "task.yaml"
        choices = "".join(f'  {name}: "{choice}"\n' for name, choice in CHOICES.items())
        self.task.write_text(
            f'name: bench\ndata: {{train: train.jsonl}}\ntemplate: "Review: {{text}}\\nSentiment:"\n'
            f"label_field: label\ntruncate: end\nchoices:\n{choices}"
        )
        self.write("train", review_texts("short", 8))
        self.tuned = root / "tuned"
        vector = np.zeros(dimension, np.float32)  # z = z0 for a generator: what a run starts from
        result = TuningResult(
            vector, None, (), None, 0.0, 0, "budget", adapter, "cma", bundle.model_id, bundle.fingerprint, {}
        )
        save_tuned(self.tuned, result, Task.from_file(self.task).format_only())

    def write(self, name: str, rows: list[dict[str, str]]) -> Path:
        path = self.root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path


@contextmanager
def client_batching(batching: RequestBatching) -> Iterator[None]:
    """What ``cbpt evaluate`` and ``predict`` use for the block (they take the module's default)."""
    previous = batches.DEFAULT_BATCHING
    batches.DEFAULT_BATCHING = batching
    try:
        yield
    finally:
        batches.DEFAULT_BATCHING = previous


def grpc_run(
    target: str, adapter: str, vector: np.ndarray, path: Path, task: Path, batching: RequestBatching
) -> tuple[float, int]:
    """Seconds and tokens the server ran for ``predict_in_batches`` over the file."""
    own = Task.from_file(task)
    examples = own.load_examples(path)
    order = np.random.default_rng(1).permutation(len(examples))  # sent shuffled, as the CLI does
    with TuningClient(target) as client:
        examples = fit_examples(client, examples.take(order), own.truncate, str(path)).examples
        started = time.perf_counter()
        predict_in_batches(client, adapter, vector, examples, "first_token", batching=batching)
        return time.perf_counter() - started, client.stats.tokens_processed


def cli_run(target: str, adapter: str, workspace: Workspace, path: Path, batching: RequestBatching) -> float:
    """Seconds of ``cbpt predict TUNED FILE`` (the tuned adapter) or ``cbpt evaluate --zero-shot``."""
    if adapter == "none":
        args = ["evaluate", "--zero-shot", "--task", str(workspace.task), str(path)]
    else:
        args = ["predict", str(workspace.tuned), str(path), "--out", str(workspace.root / "preds.jsonl")]
    with client_batching(batching):
        started = time.perf_counter()
        done = CliRunner().invoke(app, [*args, "--server", target, "--json", "--order-seed", "1"])
        seconds = time.perf_counter() - started
    if done.exit_code != 0:
        raise RuntimeError(f"cbpt {args[0]} failed: {done.output}")
    return seconds


def evaluate_section(
    bundle: ModelBundle, params: int, sizes: tuple[int, ...], lengths: tuple[str, ...] = ("short", "long")
) -> list[dict[str, Any]]:
    """rows/s and FLOP/s over the matmul of evaluate/predict on files of ``sizes`` rows, before #24 and
    now, interleaved."""
    engines = {name: served_engine(bundle, batching) for name, batching in ENGINES.items()}
    tuned = "cbp-opinion" if "cbp-opinion" in engines["now"].adapters else "bbt-cue"
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        targets = {name: stack.enter_context(serve_in_background(e)) for name, e in engines.items()}
        workspace = Workspace(Path(folder), bundle, tuned, engines["now"].adapters[tuned].dimension)
        vector = np.zeros(engines["now"].adapters[tuned].dimension, np.float32)
        for length in lengths:
            for size in sizes:
                if size > 1000 and length == "long":
                    continue  # 10k long texts take hours here; the lead's quieter run may add them
                path = workspace.write(f"{length}-{size}", review_texts(length, size))
                for adapter in (tuned, "none"):
                    counted: dict[str, int] = {}  # tokens per engine, from the gRPC run (the CLI's are equal)
                    for way in ("grpc", "cli"):
                        if size > 1000 and (way == "cli" or adapter == "none"):
                            continue  # the largest size once: the main adapter through gRPC
                        own = vector if adapter == tuned else np.zeros(0, np.float32)
                        run = partial(_one_run, way, targets, adapter, own, workspace, path)
                        measured = _interleaved(engines, 2 if size <= 1000 else 1, run)
                        for name, (seconds, tokens, square) in measured.items():
                            tokens = counted.setdefault(name, tokens)
                            results.append(
                                _row(length, size, adapter, way, name, seconds, tokens, square, params)
                            )
                            print(_line(results[-1]), flush=True)
    return results


def _one_run(way: str, targets: dict[str, str], adapter: str, vector: np.ndarray, workspace: Workspace,
             path: Path, name: str) -> tuple[float, int]:  # fmt: skip
    """Seconds and tokens run by engine ``name``'s server with its client batching; the CLI's tokens are
    left 0 (the same texts' gRPC run counted them)."""
    if way == "grpc":
        return grpc_run(targets[name], adapter, vector, path, workspace.task, CLIENTS[name])
    return cli_run(targets[name], adapter, workspace, path, CLIENTS[name]), 0


def _interleaved(
    engines: dict[str, ScoringEngine], repeats: int, run: Callable[[str], tuple[float, int]]
) -> dict[str, tuple[float, int, float]]:
    """Median seconds, tokens and matmul FLOP/s (the mean of one timed just before and one just after
    each run) of each engine's runs, taken A, B, A, B."""
    seen: dict[str, list[tuple[float, int, float]]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            before = matmul_flops(2048, 2048, 2048, seconds=1.0)
            engine.text_states = TextStateCache()  # every run starts cold, as a new file would
            seconds, tokens = run(name)
            square = (before + matmul_flops(2048, 2048, 2048, seconds=1.0)) / 2  # bracketing the run
            seen[name].append((seconds, tokens, square))
    return {
        name: (statistics.median(r[0] for r in runs), runs[0][1], statistics.median(r[2] for r in runs))
        for name, runs in seen.items()
    }


def _row(length: str, size: int, adapter: str, way: str, name: str, seconds: float, tokens: int,
         square: float, params: int) -> dict[str, Any]:  # fmt: skip
    return {
        "length": length, "rows": size, "adapter": adapter, "path": way, "engine": name,
        "seconds": seconds, "rows_per_s": size / seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
        "matmul_gflops": square / 1e9, "matmul_ratio": 2.0 * params * tokens / seconds / square,
    }  # fmt: skip


def _line(row: dict[str, Any]) -> str:
    return (
        f"evaluate {row['path']:4s} {row['adapter']:11s} {row['length']:5s} {row['rows']:5d} rows "
        f"{row['engine']:10s}: {row['rows_per_s']:7.1f} rows/s, {row['matmul_ratio']:5.1%} of matmul"
    )


def oncue_section(bundle: ModelBundle, params: int, quick: bool) -> list[dict[str, Any]]:
    """A tuning generation on the on-cue placement (texts cached), popsize 1 to 40, both engines."""
    engines = {name: served_engine(bundle, batching) for name, batching in ENGINES.items()}
    adapters = [name for name in ("bbt-cue", "cbp-opinion") if name in engines["now"].adapters]
    texts = [f"Review: {text}" for text in sst2_texts(32, seed=0)]
    results: list[dict[str, Any]] = []
    for adapter in adapters:
        for popsize in (1, 20) if quick else (1, 10, 20, 40):
            seen: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
            for _ in range(2):
                for name, engine in engines.items():
                    square = matmul_flops(2048, 2048, 2048, seconds=1.0)
                    timing = time_call(engine, adapter, popsize, texts, params)
                    seen[name].append((timing.seconds, square))
                    flops = timing.flops
            for name, runs in seen.items():
                seconds = statistics.median(run[0] for run in runs)
                square = statistics.median(run[1] for run in runs)
                results.append({"adapter": adapter, "popsize": popsize, "examples": len(texts),
                                "engine": name, "seconds": seconds,
                                "sequences_per_s": popsize * len(texts) / seconds,
                                "matmul_gflops": square / 1e9,
                                "matmul_ratio": flops / seconds / square})  # fmt: skip
                print(f"oncue {adapter} pop {popsize:2d} {name:10s}: "
                      f"{results[-1]['sequences_per_s']:6.1f} seq/s, "
                      f"{results[-1]['matmul_ratio']:5.1%} of matmul", flush=True)  # fmt: skip
    return results


def ceiling_section(bundle: ModelBundle, params: int) -> list[dict[str, Any]]:
    """The model's plain forward (every token real: no padding, no cache, no mask) at pass shapes like
    the engine's, as a ratio to the matmul: the most a forward pass of this model reaches here."""
    results = []
    backbone = bundle.model.base_model
    for sequences, length in (
        (1024, 1),
        (256, 4),
        (64, 16),
        (32, 32),
        (16, 64),
        (8, 128),
        (64, 32),
        (32, 64),
    ):
        vocabulary = bundle.model.get_input_embeddings().num_embeddings
        ids = torch.randint(0, vocabulary, (sequences, length), device=bundle.device)
        square = matmul_flops(2048, 2048, 2048, seconds=1.0)
        with torch.inference_mode():
            backbone(input_ids=ids)
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < 3.0:
                backbone(input_ids=ids)
                runs += 1
            seconds = (time.perf_counter() - started) / runs
        tokens = sequences * length
        results.append({"sequences": sequences, "length": length, "tokens": tokens, "seconds": seconds,
                        "matmul_gflops": square / 1e9,
                        "matmul_ratio": 2.0 * params * tokens / seconds / square})  # fmt: skip
        print(f"ceiling {sequences} x {length}: {results[-1]['matmul_ratio']:5.1%} of matmul", flush=True)
    return results
