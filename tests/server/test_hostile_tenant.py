"""One hostile key against four honest ones, on one tiny-model server process ("Tenants" #22, "Prove it").

The hostile key sends, from several threads at once, calls at every limit, calls past them (too many
candidates, long choices, many texts, long texts, a message past the size bound) and floods of
CountTokens, while four honest keys tune with CMA-ES. What must hold, none of it timed: the server
stays up; its peak resident memory stays within a stated bound over its warm size; every honest
call is answered with the numbers it gets alone; every hostile call is either served (the legal
ones) or refused with a clear status (INVALID_ARGUMENT naming the field, or RESOURCE_EXHAUSTED),
never left hanging or failed with an internal error; and an honest call waits for at most the turns
the scheduler's bound allows, counted in the engine's forward passes. The latencies (alone and under
attack) are printed (pytest -s).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from cbpt.client.rpc.sdk import TuningClient
from cbpt.server.front.keys import add_key
from cbpt.server.testing import tiny_tokenizer
from cbpt.v1 import tuning_pb2, tuning_pb2_grpc
from tests.server.helpers import candidates, evaluate_request, failure
from tests.server.processes import ServerProcess
from tests.server.test_load import GENERATIONS, Run, _rss_bytes, tune
from tests.server.tiny_server import LIMITS

HONEST = 4
THREADS = 6  # the hostile key's concurrent calls
RSS_BOUND = 256 << 20  # over the warm server's resident size
PEAK_FIELD = "VmHWM:"


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(PEAK_FIELD):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _reset_peak(pid: int) -> None:
    """Start the peak over from the current size (Linux: writing 5 to clear_refs resets VmHWM)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _text_at_limit(tokenizer, index: int) -> str:
    """A text of as many tokens as the limits allow (max_text_tokens, within max_text_chars)."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz ,."))
    text = f"{index:03d} " + "".join(np.random.default_rng(index).choice(letters, LIMITS.max_text_chars))
    text = text[: LIMITS.max_text_chars]
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) > LIMITS.max_text_tokens:
        text = text[:-4]
    return text


def _reason(message: str) -> str:
    """A refusal's message without its numbers: what the figures group by."""
    return " ".join(word for word in message.split()[:8] if not any(ch.isdigit() for ch in word))


def hostile_calls(stub: tuning_pb2_grpc.TuningStub, key: str) -> dict[str, tuple[bool, Callable[[], object]]]:
    """Each kind of hostile call: (legal, call). Legal ones may be served; the others must be refused."""
    tokenizer = tiny_tokenizer()
    metadata = [("authorization", f"Bearer {key}")]
    texts = [_text_at_limit(tokenizer, i) for i in range(LIMITS.max_examples)]
    dimension = 16
    at_limit = evaluate_request(
        candidates(LIMITS.max_candidates, dimension),
        texts,
        ["A", "B", "C", "D"],
        adapter="bbt-suffix",
        cue="\nSentiment:",
    )
    full_choice = evaluate_request(
        candidates(LIMITS.max_sequences // (LIMITS.max_examples * 4), dimension),
        texts,
        ["AB", "CD", "EF", "GH"],
        adapter="bbt",
        mode=tuning_pb2.SCORING_MODE_FULL_CHOICE,
    )
    calls: dict[str, tuple[bool, Callable[[], object]]] = {
        "every limit": (True, lambda: stub.Evaluate(at_limit, metadata=metadata, timeout=60)),
        "every limit, full choice": (True, lambda: stub.Evaluate(full_choice, metadata=metadata, timeout=60)),
        "count tokens flood": (
            True,
            lambda: stub.CountTokens(
                tuning_pb2.CountTokensRequest(texts=texts), metadata=metadata, timeout=60
            ),
        ),
        "too many candidates": (
            False,
            lambda: stub.Evaluate(
                evaluate_request(candidates(LIMITS.max_candidates + 1, dimension), texts[:2]),
                metadata=metadata,
                timeout=60,
            ),
        ),
        "long choices": (
            False,
            lambda: stub.Evaluate(
                evaluate_request(candidates(1, dimension), texts[:2], [" yes" * 2000, " no"]),
                metadata=metadata,
                timeout=60,
            ),
        ),
        "many texts": (
            False,
            lambda: stub.Evaluate(
                evaluate_request(candidates(1, dimension), ["x"] * 5000), metadata=metadata, timeout=60
            ),
        ),
        "long text": (
            False,
            lambda: stub.Evaluate(
                evaluate_request(candidates(1, dimension), ["y" * (LIMITS.max_text_chars + 1)]),
                metadata=metadata,
                timeout=60,
            ),
        ),
        "huge message": (
            False,
            lambda: stub.Evaluate(
                evaluate_request(candidates(1, dimension), ["z" * 200] * 400), metadata=metadata, timeout=60
            ),
        ),
    }
    return calls


def attack(
    stub: tuning_pb2_grpc.TuningStub, key: str, stop: threading.Event, outcomes: list[tuple[str, str, str]]
) -> None:
    """Every kind of hostile call in turn, from several threads, until ``stop``."""
    calls = hostile_calls(stub, key)
    lock = threading.Lock()

    def loop(offset: int) -> None:
        kinds = list(calls)
        turn = offset
        while not stop.is_set():
            kind = kinds[turn % len(kinds)]
            turn += 1
            _, call = calls[kind]
            try:
                call()
                result = ("served", "")
            except grpc.RpcError as error:
                seen = failure(error)
                result = (seen.code.name, seen.message or "")
            with lock:
                outcomes.append((kind, *result))

    with ThreadPoolExecutor(THREADS) as pool:
        for offset in range(THREADS):
            pool.submit(loop, offset)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    keys_file = tmp_path_factory.mktemp("hostile") / "keys.json"
    # The hostile key is let through the door's rate limit, so that its calls reach validation and the
    # engine: what must hold there is that one key's job takes one step per round, whatever it sends.
    hostile = add_key(keys_file, "hostile", requests_per_minute=1_000_000, max_concurrent=THREADS)
    keys = [add_key(keys_file, f"honest{i}") for i in range(HONEST)] + [hostile]
    process = ServerProcess(
        "tests.server.tiny_server",
        "--keys",
        str(keys_file),
        "--pass-seconds",
        "0.0005",
        "--batch-sequences",
        "64",
    )
    try:
        yield process, process.address(), keys
    finally:
        process.kill()


def _honest_round(server: ServerProcess, target: str, keys: list[str]) -> tuple[list[Run], list[int]]:
    """The four honest keys tuning at once; per call, the engine passes run while it was out."""
    passes: list[int] = []
    lock = threading.Lock()

    class CountedClient(TuningClient):
        def evaluate(self, *args: Any, **kwargs: Any) -> np.ndarray:
            before = server.passes()
            result = super().evaluate(*args, **kwargs)
            with lock:
                passes.append(server.passes() - before)
            return result

    def counted(key: str, index: int) -> Run:
        return tune(target, key, index, client_class=CountedClient)

    with ThreadPoolExecutor(HONEST) as pool:
        runs = list(pool.map(lambda pair: counted(*pair), [(key, i) for i, key in enumerate(keys[:HONEST])]))
    return runs, passes


def test_a_hostile_key_neither_stops_the_server_nor_starves_the_honest_ones(server, capsys) -> None:
    process, target, keys = server
    pid = process.process.pid
    alone, passes_alone = _honest_round(process, target, keys)  # also the warm-up
    warm = _rss_bytes(pid)
    _reset_peak(pid)
    stop = threading.Event()
    outcomes: list[tuple[str, str, str]] = []
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 1 << 20)]) as channel:
        stub = tuning_pb2_grpc.TuningStub(channel)
        attacker = threading.Thread(target=attack, args=(stub, keys[HONEST], stop, outcomes))
        attacker.start()
        while len(outcomes) < 20:  # the attack is under way before the honest keys start
            time.sleep(0.05)
        try:
            attacked, passes_attacked = _honest_round(process, target, keys)
        finally:
            stop.set()
            attacker.join(120)
        peak = _peak_rss(pid)
        bearer = [("authorization", f"Bearer {keys[0]}")]
        info = stub.GetServerInfo(tuning_pb2.GetServerInfoRequest(), metadata=bearer, timeout=30)  # still up
    assert info.model_id and process.process.poll() is None

    for single, run in zip(alone, attacked, strict=True):  # nothing an honest key reads depends on the attack
        for expected, got in zip(single.scores, run.scores, strict=True):
            np.testing.assert_allclose(got, expected, atol=1e-4)
    legal = {kind: call[0] for kind, call in hostile_calls(stub, keys[HONEST]).items()}
    by_reason = Counter((kind, code, _reason(message)) for kind, code, message in outcomes)
    for kind, code, message in outcomes:
        assert code in {"served", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}, (kind, code, message)
        assert code != "served" or legal[kind], (kind, "an over-limit call was served")
        assert code != "INVALID_ARGUMENT" or ":" in message, (kind, message)  # names the field
    assert peak <= warm + RSS_BOUND, (warm, peak)
    # The bound: with k keys' jobs taking turns, a call of s steps ends within k * s passes. The hostile
    # key has one job at a time, so with it at most five jobs take turns (four, alone): an honest call
    # waits for at most 5 * s passes however large the hostile calls are (room for the log's lag).
    assert max(passes_attacked) <= 5 * max(passes_alone) + 20, (max(passes_alone), max(passes_attacked))

    latency = {
        name: [t for run in runs for t in run.latencies]
        for name, runs in (("alone", alone), ("attacked", attacked))
    }
    p = {name: np.percentile(values, [50, 99]) for name, values in latency.items()}
    with capsys.disabled():
        print(
            "\nhostile tenant: honest p50/p99 alone "
            f"{p['alone'][0] * 1000:.0f}/{p['alone'][1] * 1000:.0f} ms, "
            f"under attack {p['attacked'][0] * 1000:.0f}/{p['attacked'][1] * 1000:.0f} ms "
            f"(p99 x{p['attacked'][1] / p['alone'][1]:.1f}); "
            f"passes per honest call max {max(passes_alone)} alone, {max(passes_attacked)} under attack; "
            f"RSS warm {warm / 2**20:.0f} MB, peak {peak / 2**20:.0f} MB; "
            f"{len(outcomes)} hostile calls: "
            + "; ".join(
                f"{kind}: {code} {reason} x{n}" for (kind, code, reason), n in sorted(by_reason.items())
            )
        )
    assert len(latency["attacked"]) == GENERATIONS * HONEST
