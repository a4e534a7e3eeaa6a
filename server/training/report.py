"""The training curve: train loss (smoothed) and each task's dev accuracy against steps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_curve(path: Path, history: Sequence[dict[str, Any]]) -> bool:
    """Write ``path`` (PNG); False when matplotlib is missing (the [plot] extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    train = [(row["step"], row["loss"]) for row in history if "loss" in row]
    dev = [row for row in history if "dev" in row]
    figure, (loss_axis, dev_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        steps, losses = zip(*train, strict=True)
        window = max(1, len(losses) // 50)
        smoothed = [
            sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
            for i in range(len(losses))
        ]
        loss_axis.plot(steps, losses, alpha=0.25, label="per step")
        loss_axis.plot(steps, smoothed, label=f"mean of {window}")
        loss_axis.legend()
    loss_axis.set(xlabel="step", ylabel="cross-entropy", title="train loss")
    for task in sorted({name for row in dev for name in row["dev"]}):
        points = [(row["step"], row["dev"][task]["accuracy"]) for row in dev if task in row["dev"]]
        dev_axis.plot(*zip(*points, strict=True), marker="o", label=task)
    if dev:
        dev_axis.legend()
    dev_axis.set(xlabel="step", ylabel="accuracy at z = 0", title="dev accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
