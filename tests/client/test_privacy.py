"""Labels and losses never cross the wire: every serialized request byte is recorded and searched."""

from __future__ import annotations

import struct
from pathlib import Path

import grpc

from cbpt.client.files.artifacts import load_tuned, save_tuned
from cbpt.client.rpc.sdk import TuningClient
from cbpt.client.tuning.checkpoint import load_checkpoint
from cbpt.client.tuning.tuner import Tuner
from cbpt.common.tasks.task import Task
from tests.client.helpers import LABELS, TaskFactory


class RequestRecorder(grpc.UnaryUnaryClientInterceptor):
    """Keeps the exact bytes of every request message the client puts on the channel."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self.requests.append((client_call_details.method, request.SerializeToString()))
        return continuation(client_call_details, request)


def _loss_patterns(values: set[float]) -> list[bytes]:
    patterns = []
    for value in values:
        patterns += [struct.pack("<f", value), struct.pack("<d", value), struct.pack(">f", value)]
        patterns += [repr(value).encode(), f"{value:.6f}".encode(), f"{value:.4f}".encode()]
    return patterns


def test_no_label_and_no_loss_crosses_the_wire(server: str, make_task: TaskFactory, tmp_path: Path) -> None:
    task = Task.from_file(make_task())
    recorder = RequestRecorder()
    checkpoint = tmp_path / "run.cbpt"
    with TuningClient(server, interceptors=[recorder]) as client:
        result = Tuner(
            client, task, budget=12, popsize=4, fit_bias=True, loss="ce", checkpoint=checkpoint
        ).run()
        save_tuned(tmp_path / "tuned", result, task.format_only())
        load_tuned(tmp_path / "tuned").log_probs(client, task.dev)

    methods = [method for method, _ in recorder.requests]
    assert (
        methods.count("/cbpt.v1.Tuning/Evaluate") == 3 + 3 + 1 and "/cbpt.v1.Tuning/GetServerInfo" in methods
    )
    wire = b"".join(data for _, data in recorder.requests)
    assert task.texts[0].encode() in wire  # the recorder does see the payload

    for label in LABELS:
        assert label.encode() not in wire
    assert b"LABEL_SECRET" not in wire and b"label" not in wire.lower()

    losses = {
        loss for generation in load_checkpoint(checkpoint).state.generations for loss in generation.losses
    }
    losses |= {row.best_loss for row in result.history} | {row.mean_loss for row in result.history}
    losses |= {result.train_loss, result.dev_metrics["loss"]}
    losses.discard(0.0)  # a zero would match any run of zero bytes; CE is never exactly 0 anyway
    assert len(losses) > 4
    leaked = [pattern for pattern in _loss_patterns(losses) if pattern in wire]
    assert leaked == []
