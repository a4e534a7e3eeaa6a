"""Every task shape the client tunes, trained through the engine's own scoring path.

A task has one shared choice list (``choices``) or one list per row (``options_field``), and is
scored by each choice's first token or by the sum over all of its tokens (``mode: full_choice``).
The engine already scores every shape (``ScoringEngine.log_probs``: a list shorter than the
widest is padded with -inf, and the log-softmax runs over each example's own choices), so
training differs from serving in nothing but the gradient. What this module adds is what the
trainer needs around that path: the request of a batch in its task's mode, the loss over padded
lists, and, before the first step, texts cut as the client cuts them (``truncate``), and the rows
the engine would refuse (an option or a text over its limits) taken out and counted, so that one
row cannot stop a run hours in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cbpt.common.errors import TaskError
from cbpt.common.info import ServerInfo
from cbpt.common.limits import Limits
from cbpt.common.tasks.fitting import fit_examples
from cbpt.common.tasks.task_format import Examples
from cbpt.server.engine.types import ScoreRequest, ScoringMode
from cbpt.server.errors import ConfigError
from cbpt.server.training.domain import Domain, TrainingTask

if TYPE_CHECKING:
    from cbpt.server.engine.scoring import ScoringEngine

Tokens = tuple[int, ...]


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


def _choice_problem(
    options: tuple[str, ...], tokens: dict[str, Tokens], mode: ScoringMode, limits: Limits
) -> str | None:
    """Why the engine would refuse this choice list (as ``Preparer`` does), or None."""
    if not options or len(options) > limits.max_choices:
        return f"{len(options)} choices (1 to {limits.max_choices} are scored)"
    for option in options:
        if not 0 < len(tokens[option]) <= limits.max_choice_tokens:
            return (
                f"choice {option!r} encodes to {len(tokens[option])} tokens (1 to {limits.max_choice_tokens})"
            )
    firsts = [tokens[option][0] for option in options]
    if mode is ScoringMode.FIRST_TOKEN and len(set(firsts)) != len(firsts):
        return "two choices share their first token; use mode: full_choice"
    return None


def _text_problem(text: str, count: int, limits: Limits) -> str | None:
    if not text.strip():
        return "empty text"
    if len(text) > limits.max_text_chars:
        return f"{len(text)} characters (at most {limits.max_text_chars})"
    if not 0 < count <= limits.max_text_tokens:
        return f"the text encodes to {count} tokens (1 to {limits.max_text_tokens})"
    return None


def _encode(tokenizer: Any, strings: set[str]) -> dict[str, Tokens]:
    ordered = sorted(strings)
    ids = tokenizer(ordered, add_special_tokens=False)["input_ids"] if ordered else []
    return {string: tuple(i) for string, i in zip(ordered, ids, strict=True)}


def _fitting(task: TrainingTask, examples: Examples, tokenizer: Any, limits: Limits) -> list[tuple[int, str]]:
    """(index, why) of every example of ``examples`` the engine would refuse."""
    mode = ScoringMode(task.format.mode)
    choices = examples.choices
    tokens = _encode(tokenizer, {option for options in choices.lists for option in options})
    texts = _encode(tokenizer, set(examples.texts))
    where = f"task {task.name!r} ({task.data_file})"
    if choices.shared and (problem := _choice_problem(choices.lists[0], tokens, mode, limits)):
        raise ConfigError(f"{where}: {problem}")
    refused = []
    for index, text in enumerate(examples.texts):
        problem = _text_problem(text, len(texts[text]), limits)
        if problem is None and not choices.shared:
            problem = _choice_problem(choices.lists[index], tokens, mode, limits)
        if problem is not None:
            refused.append((index, problem))
    return refused


class _EngineCounter:
    """Answers ``fit_examples`` from the training engine: its limits and its tokenizer's counts."""

    target = "the training engine"

    def __init__(self, engine: ScoringEngine) -> None:
        self.engine = engine

    def info(self) -> ServerInfo:
        limits, bundle = self.engine.limits, self.engine.bundle
        stated = Limits.stated(max_text_tokens=limits.max_text_tokens, max_text_chars=limits.max_text_chars)
        return ServerInfo(bundle.model_id, bundle.fingerprint, bundle.hidden_size, (), stated, "")

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(self.engine.prepare.tokens(text, "texts", 1 << 30, allow_empty=True)) for text in texts]


def _truncated(task: TrainingTask, engine: ScoringEngine) -> TrainingTask:
    """A task with ``truncate``: its texts cut as a user's client cuts them (``fit_examples``, the same
    code, counting with the engine's tokenizer), so training sees what serving will."""
    if task.format.truncate is None:
        return task
    counter, cut = _EngineCounter(engine), 0
    splits = {}
    for name, split in (("train", task.train), ("dev", task.dev)):
        try:
            fitted = fit_examples(
                counter, split, task.format.truncate, f"task {task.name!r} ({task.data_file})"
            )
        except TaskError as error:
            raise ConfigError(str(error)) from None
        splits[name], cut = fitted.examples, cut + fitted.truncated
    return dataclasses.replace(task, train=splits["train"], dev=splits["dev"], truncated=cut)


def fit_domain(domain: Domain, engine: ScoringEngine) -> Domain:
    """The domain as the engine can score it: texts of tasks with ``truncate`` cut as the client cuts
    them (counted in ``truncated``); then the rows the engine would refuse (an option over
    ``max_choice_tokens``, a text over ``max_text_tokens``, ...) left out, each task's count kept in
    ``over_limits``: a user's server refuses them too, and one such row must not stop a run hours in.
    A task whose shared choices or cue cannot be scored, or that keeps no training row, is refused
    now, named, with the first row's reason."""
    tokenizer, limits = engine.bundle.tokenizer, engine.limits
    tasks = []
    for task in domain.tasks:
        task = _truncated(task, engine)
        cue = len(_encode(tokenizer, {task.train.cue})[task.train.cue]) if task.train.cue else 0
        if cue > limits.max_text_tokens:
            raise ConfigError(f"task {task.name!r}: the answer cue encodes to {cue} tokens")
        refused = {
            name: _fitting(task, split, tokenizer, limits)
            for name, split in (("train", task.train), ("dev", task.dev))
        }
        train, dev = task.train, task.dev
        if len(refused["train"]) == len(train):
            index, why = min(refused["train"], key=lambda item: train.rows[item[0]])  # in file order
            raise ConfigError(
                f"task {task.name!r}: no training row fits the engine's limits "
                f"(e.g. {task.data_file} row {train.rows[index] + 1}: {why})"
            )
        keep = {
            name: sorted(set(range(len(split))) - {i for i, _ in refused[name]})
            for name, split in (("train", train), ("dev", dev))
        }
        dropped = len(refused["train"]) + len(refused["dev"])
        tasks.append(
            dataclasses.replace(
                task, train=train.take(keep["train"]), dev=dev.take(keep["dev"]), over_limits=dropped
            )
            if dropped
            else task
        )
    return dataclasses.replace(domain, tasks=tuple(tasks))
