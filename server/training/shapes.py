"""Every task shape the client tunes, trained through the engine's own scoring path.

A task has one shared choice list (``choices``) or one list per row (``options_field``), and is
scored by each choice's first token or by the sum over all of its tokens (``mode: full_choice``).
The engine already scores every shape (``ScoringEngine.log_probs``: a list shorter than the
widest is padded with -inf, and the log-softmax runs over each example's own choices), so
training differs from serving in nothing but the gradient. What this module adds is what the
trainer needs around that path: the request of a batch in its task's mode, the loss over padded
lists, and, before the first step, the rows whose choice lists fit the engine's limits (the others
are dropped and counted, a task none of whose rows fit is refused), so a run never fails hours in on one row.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from cbpt.client.task_format import Examples
from cbpt.server.engine.limits import Limits
from cbpt.server.engine.types import ScoreRequest, ScoringMode
from cbpt.server.errors import ConfigError
from cbpt.server.training.domain import TrainingTask


def request(
    adapter: str, task: TrainingTask, examples: Examples, candidates: np.ndarray, scope: str
) -> ScoreRequest:
    """The engine request that scores ``examples`` of ``task`` exactly as ``Evaluate`` serves them
    (its mode, its cue, its choice lists); training replaces ``candidates`` by its own z."""
    return ScoreRequest(
        adapter,
        candidates,
        examples.texts,
        examples.choices,
        mode=ScoringMode(task.format.mode),
        cue=examples.cue,
        scope=scope,
    )


def label_loss(log_probs: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Mean cross-entropy of the labels over [z samples, examples, choices] log-probs.

    Each label indexes its own example's choices, which the engine normalised on their own (pads
    are -inf, with zero probability and zero gradient), so rows with fewer options need no mask.
    """
    index = torch.as_tensor(labels, dtype=torch.long, device=log_probs.device)
    picked = log_probs.gather(2, index[None, :, None].expand(log_probs.shape[0], -1, 1))
    return -picked.mean()


def _problem(
    options: tuple[str, ...], tokens: dict[str, tuple[int, ...]], mode: ScoringMode, limits: Limits
) -> str | None:
    """Why the engine would refuse this choice list, or None."""
    if len(options) > limits.max_choices:
        return f"{len(options)} choices exceed the limit of {limits.max_choices}"
    for option in options:
        count = len(tokens[option])
        if not count or count > limits.max_choice_tokens:
            return f"choice {option!r} encodes to {count} tokens (1 to {limits.max_choice_tokens} are scored)"
    firsts = [tokens[option][0] for option in options]
    if mode is ScoringMode.FIRST_TOKEN and len(set(firsts)) != len(firsts):
        return "two choices share their first token; use mode: full_choice"
    return None


def scorable(task: TrainingTask, tokenizer: Any, limits: Limits) -> TrainingTask:
    """The task without the rows whose choice lists the engine would refuse, counted in the record.

    A shared list that does not fit refuses the task (every row would go), naming why; of per-row
    options only the rows that cannot be scored are dropped (a public multiple-choice set has a few
    options longer than ``max_choice_tokens``), and a task left with none is refused.
    """
    mode = ScoringMode(task.format.mode)
    strings = sorted(
        {o for part in (task.train, task.dev) for options in part.choices.lists for o in options}
    )
    ids = tokenizer(strings, add_special_tokens=False)["input_ids"] if strings else []
    tokens = dict(zip(strings, (tuple(i) for i in ids), strict=True))
    if task.train.choices.shared:
        if reason := _problem(task.train.choices.lists[0], tokens, mode, limits):
            raise ConfigError(f"task {task.name!r} ({task.data_file}): {reason}")
        return task
    kept: dict[str, list[int]] = {}
    first: tuple[int, str] | None = None  # the first refused row in file order, and why
    for part_name, part in (("train", task.train), ("dev", task.dev)):
        kept[part_name] = []
        for index, (row, options) in enumerate(zip(part.rows, part.choices.lists, strict=True)):
            if (reason := _problem(options, tokens, mode, limits)) is None:
                kept[part_name].append(index)
            elif first is None or row < first[0]:
                first = (row, reason)
    if not kept["train"]:
        assert first is not None
        row, reason = first
        raise ConfigError(
            f"task {task.name!r}: no row can be scored ({task.data_file} row {row + 1}: {reason})"
        )
    dropped = len(task.train) + len(task.dev) - len(kept["train"]) - len(kept["dev"])
    return replace(
        task, train=task.train.take(kept["train"]), dev=task.dev.take(kept["dev"]), unscorable=dropped
    )
