"""Every task shape the client tunes, trained through the engine's own scoring path.

A task has one shared choice list (``choices``) or one list per row (``options_field``), and is
scored by each choice's first token or by the sum over all of its tokens (``mode: full_choice``).
The engine already scores every shape (``ScoringEngine.log_probs``: a list shorter than the
widest is padded with -inf, and the log-softmax runs over each example's own choices), so
training differs from serving in nothing but the gradient. What this module adds is what the
trainer needs around that path: the request of a batch in its task's mode, the loss over padded
lists, and a check, before the first step, that every choice list of every task fits the engine's
limits, so that a run is refused at its start rather than failing hours in on one row.
"""

from __future__ import annotations

from collections.abc import Iterator
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


def _lists(examples: Examples) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(source row, choice list) of every example; a shared list once."""
    if examples.choices.shared:
        yield (examples.rows[0] if examples.rows else 0), examples.choices.lists[0]
        return
    yield from zip(examples.rows, examples.choices.lists, strict=True)


def check_choices(task: TrainingTask, tokenizer: Any, limits: Limits) -> None:
    """Refuse a task whose choice lists the engine would refuse: naming the task, the row and why."""
    mode = ScoringMode(task.format.mode)
    lists = sorted([*_lists(task.train), *_lists(task.dev)], key=lambda item: item[0])  # file order
    strings = sorted({option for _, options in lists for option in options})
    ids = tokenizer(strings, add_special_tokens=False)["input_ids"] if strings else []
    tokens = dict(zip(strings, (tuple(i) for i in ids), strict=True))
    for row, options in lists:
        where = f"task {task.name!r} ({task.data_file} row {row + 1})"
        if len(options) > limits.max_choices:
            raise ConfigError(f"{where}: {len(options)} choices exceed the limit of {limits.max_choices}")
        for option in options:
            count = len(tokens[option])
            if not count or count > limits.max_choice_tokens:
                raise ConfigError(
                    f"{where}: choice {option!r} encodes to {count} tokens "
                    f"(1 to {limits.max_choice_tokens} are scored)"
                )
        firsts = [tokens[option][0] for option in options]
        if mode is ScoringMode.FIRST_TOKEN and len(set(firsts)) != len(firsts):
            raise ConfigError(f"{where}: two choices share their first token; use mode: full_choice")
