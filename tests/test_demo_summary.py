"""The README's main job states its held-out figures as mean ± std over seeds (scripts/demo.py --seeds)."""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"


def _demo():
    spec = importlib.util.spec_from_file_location("demo", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _figures(accuracy: float) -> dict:
    return {"accuracy": accuracy, "macro_f1": accuracy - 0.1, "confusion_matrix": [[2, 1], [0, 3]]}


def test_a_sweep_over_seeds_is_summarised_as_mean_and_sample_std() -> None:
    demo = _demo()
    args = argparse.Namespace(adapter="bbt-cue", budget=200, popsize=20, seed=0, seeds="0,1,2")
    zero = {**_figures(0.4), "plain": _figures(0.4), "calibrated": _figures(0.38)}
    summary = demo.summarise(args, zero, [_figures(0.5), _figures(0.47), _figures(0.53)], 10.0, 20.0)
    assert summary["seeds"] == [0, 1, 2] and summary["held_out_examples"] == 6
    assert summary["zero_shot_accuracy"] == 0.4 and summary["calibrated_zero_shot_accuracy"] == 0.38
    assert summary["tuned_accuracy"] == statistics.fmean([0.5, 0.47, 0.53])
    assert summary["tuned_accuracy_std"] == statistics.stdev([0.5, 0.47, 0.53])
    assert [entry["seed"] for entry in summary["per_seed"]] == [0, 1, 2]
    single = demo.summarise(
        argparse.Namespace(**{**vars(args), "seeds": None}), zero, [_figures(0.5)], 1.0, 2.0
    )
    assert single["seeds"] == [0] and single["tuned_accuracy"] == 0.5 and single["tuned_accuracy_std"] == 0.0
