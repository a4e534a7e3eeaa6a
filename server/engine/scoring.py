"""ScoringEngine: scores a population of candidate vectors on unlabelled texts.

Every (candidate, example[, choice]) sequence runs batched in length-sorted chunks, and the LM
head is applied only where a choice token is read. Whatever does not depend on the row is
computed once (see strategies.py). ``score_many`` lays several requests end to end in the same
chunks, which is how concurrent calls share forward passes; ``job`` is the same call cut into
steps of one forward pass each, so that a scheduler can interleave calls and stop abandoned ones
between chunks (jobs.py). ``log_probs`` is the same computation as differentiable tensors:
generator training calls it with gradients on, so a trained generator is scored while training
exactly as ``Evaluate`` scores it when served.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
import torch

from cbpt.common.info import AdapterInfo
from cbpt.common.limits import Limits
from cbpt.server.adapters import Adapter, Placement
from cbpt.server.adapters.spec import check_unique_names
from cbpt.server.engine.batching import Batching
from cbpt.server.engine.jobs import CountJob, Outcome, ScoringJob, run_to_end
from cbpt.server.engine.kv import StateBudget, TextStateCache
from cbpt.server.engine.plan import Row, plan_group
from cbpt.server.engine.prepare import (
    DEFAULT_TOKEN_CACHE_BYTES,
    Prepared,
    Preparer,
    leading_special_tokens,
)
from cbpt.server.engine.readout import read_first_tokens, read_full_choices
from cbpt.server.engine.strategies import (
    FullSequence,
    GroupInputs,
    ModelParts,
    PrefixStates,
    PromptSlots,
    Strategy,
)
from cbpt.server.engine.text_states import TextStates
from cbpt.server.engine.types import EngineInfo, ScoreRequest, ScoreResult, ScoringMode
from cbpt.server.errors import InvalidRequest
from cbpt.server.model import ModelBundle

GroupScores = list[tuple[torch.Tensor, int]]  # per request of a group: log-probs, tokens run


class ScoringEngine:
    def __init__(
        self,
        bundle: ModelBundle,
        adapters: Sequence[Adapter],
        limits: Limits | None = None,
        *,
        batching: Batching | None = None,
        token_cache_size: int = 4096,
        token_cache_bytes: int = DEFAULT_TOKEN_CACHE_BYTES,
        text_states: TextStateCache | None = None,
        max_state_bytes: int = 256 << 20,
        not_served: tuple[tuple[str, str], ...] = (),
        **knobs: Any,
    ) -> None:
        """``batching`` sets every batching knob (``Batching``); ``knobs`` override single ones of it
        (``batch_tokens=512``), for tests and benchmarks."""
        check_unique_names([adapter.name for adapter in adapters])
        self.bundle = bundle
        self.limits = limits or Limits()
        self.batching = dataclasses.replace(batching or Batching(), **knobs)
        self.adapters = {adapter.name: adapter.to(bundle.device, bundle.dtype) for adapter in adapters}
        self.text_states = text_states if text_states is not None else TextStateCache()
        self.state_budget = StateBudget(max_state_bytes)  # text states all running jobs hold at once
        self.not_served = not_served  # shipped generators left out, and why (``info``)
        model = bundle.model
        self._head = model.get_output_embeddings()
        self.parts = ModelParts(
            embed=model.get_input_embeddings(),
            backbone=model.base_model,
            config=model.config,
            bos=leading_special_tokens(bundle.tokenizer),
            pad_id=bundle.tokenizer.pad_token_id or 0,
            device=bundle.device,
            hidden_size=bundle.hidden_size,
            batching=self.batching,
        )
        self.prepare = Preparer(
            bundle.tokenizer, self.adapters, self.limits, token_cache_size, token_cache_bytes
        )
        self.lock = threading.Lock()  # one step at a time, whichever thread drives the jobs

    def info(self) -> EngineInfo:
        adapters = tuple(
            AdapterInfo(
                a.name, a.method, a.dimension, a.prompt_length, a.domain, a.description, a.placement.value
            )
            for a in self.adapters.values()
        )
        bundle = self.bundle
        return EngineInfo(
            bundle.model_id, bundle.fingerprint, bundle.hidden_size, adapters, self.limits, self.not_served
        )

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of texts as scoring tokenises them (``CountTokens``); raises InvalidRequest."""
        job = self.count_job(texts)
        while job.step():
            pass
        (outcome,) = job.outcomes()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def count_job(self, texts: Sequence[str]) -> CountJob:
        """``count_tokens`` as a job of steps, for the scheduler to interleave with scoring jobs."""
        return CountJob(self, texts)

    def score(self, request: ScoreRequest) -> ScoreResult:
        outcome = self.score_many([request])[0]
        if isinstance(outcome, InvalidRequest):
            raise outcome
        return outcome

    def score_many(
        self, requests: Sequence[ScoreRequest], stop: Callable[[], bool] | None = None
    ) -> list[Outcome]:
        """Score several requests, sharing forward passes among those of one group (``Prepared.group_key``).

        Each request is validated on its own: a bad one gets its error back in its slot and the
        others are still scored. Merged scores equal those of scoring each request alone.
        ``stop`` is asked before every forward pass; once it answers True the call ends there and
        every request not yet scored gets ``CallCancelled`` in its slot.
        """
        job = self.job(requests)
        while job.step():
            if stop is not None and stop():
                job.cancel_all()
        return job.outcomes()

    def job(self, requests: Sequence[ScoreRequest]) -> ScoringJob:
        """``score_many`` as a job of steps, one forward pass each, for a scheduler to interleave."""
        return ScoringJob(self, requests)

    def pooled_inputs(self, texts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Mean input embedding per tokenised text [texts, hidden]: what a generator reads, once per
        request."""
        embed, device = self.parts.embed, self.parts.device
        return torch.stack([embed(torch.tensor(ids, device=device)).mean(0) for ids in texts])

    def strategy(self, adapter: Adapter) -> type[Strategy]:
        """How rows of ``adapter`` run: reusing per-text or per-candidate states where the prompt allows."""
        if not adapter.prompt_length:
            return FullSequence
        if adapter.placement is not Placement.PREFIX:
            return TextStates if self.batching.reuse_text_states else FullSequence
        if not adapter.reads_inputs and self.batching.reuse_prefix_states:
            return PrefixStates
        return FullSequence

    def log_probs(self, group: list[Prepared], z: torch.Tensor | None = None) -> GroupScores:
        """Per request of a group (one mode and cue; one adapter, or adapters of one after-text slot):
        log-probs [candidates, examples, choices] normalised over each example's choices (-inf pads), and
        the tokens run.

        ``z`` replaces the requests' own candidates (all of them, laid end to end): training passes
        a tensor that requires grad. The caller chooses the grad mode; ``score_many`` serves under
        ``inference_mode``.
        """
        return run_to_end(self.group_steps(group, z))

    def group_steps(
        self,
        group: list[Prepared],
        z: torch.Tensor | None = None,
        skip: Callable[[int], bool] | None = None,
    ) -> Generator[int, None, GroupScores]:
        """``log_probs`` one forward pass at a time: yields each pass's sequences, returns the scores.

        ``skip(owner)`` is asked before every chunk: rows of a request it names are left out from
        then on (its scores are then incomplete; the caller discards them).
        """
        _, mode, cue = group[0].group_key
        adapters = tuple(prepared.adapter for prepared in group)
        adapter = adapters[0]  # the group shares its placement and prompt length (``group_key``)
        parts = self.parts
        full = mode is ScoringMode.FULL_CHOICE
        after_text = adapter.placement is not Placement.PREFIX
        texts = [text for prepared in group for text in prepared.encoded.texts]
        choices = [options for prepared in group for options in prepared.encoded.choices]
        if z is None:
            z = torch.from_numpy(_candidates_end_to_end(group))
        z = z.to(parts.device, self.bundle.dtype)
        if any(member.reads_inputs for member in adapters):
            pooled = self.pooled_inputs(texts)
        else:  # the adapter ignores pooled inputs: skip the lookups
            pooled = z.new_zeros(len(texts), parts.hidden_size)
        offsets, rows = plan_group(group, after_text, full)
        inputs = GroupInputs(
            adapters, PromptSlots.of(adapter, len(cue)), z, pooled, group, rows, texts, after_text
        )
        kind = self.strategy(adapter)
        if kind is TextStates:
            strategy: Strategy = TextStates(parts, inputs, self.text_states, self.state_budget)
        else:
            strategy = kind(parts, inputs)
        tokens = [0] * len(group)
        scores = [
            torch.full((len(p.candidates), len(p.encoded.texts), max(p.choice_counts)), -torch.inf)
            for p in group
        ]
        windows = strategy.windows()
        try:  # closed at once when the job stops, so a window's states and budget go with it
            for passes, chunks in windows:
                yield from passes
                for planned in chunks:
                    chunk = planned if skip is None else planned.without(skip)
                    if not chunk.size:
                        continue
                    hidden, sequences, ends = strategy.forward(chunk)
                    rows = chunk.rows
                    for row in rows:
                        tokens[row.owner] += row.length
                    if rows:
                        where = (sequences.to(hidden.device), ends.to(hidden.device))
                        if full:
                            values = read_full_choices(self._head, hidden, where, rows)
                        else:
                            values = read_first_tokens(self._head, hidden, where, rows, choices)
                        _scatter(rows, values, offsets, scores)
                    yield len(rows)
        finally:
            windows.close()
        tokens = [run + cached for run, cached in zip(tokens, strategy.tokens, strict=True)]
        return [
            (owner_scores.log_softmax(dim=-1), owner_tokens)
            for owner_scores, owner_tokens in zip(scores, tokens, strict=True)
        ]


def _candidates_end_to_end(group: list[Prepared]) -> np.ndarray:
    """Every request's candidates in one [candidates, widest dimension] array; adapters of a smaller
    dimension read only their own leading columns, so the zero padding is never used."""
    width = max(prepared.candidates.shape[1] for prepared in group)
    return np.concatenate([np.pad(p.candidates, ((0, 0), (0, width - p.candidates.shape[1]))) for p in group])


def _scatter(
    chunk: list[Row], values: torch.Tensor, offsets: list[tuple[int, int]], scores: list[torch.Tensor]
) -> None:
    """Write a chunk's per-row values (first-token logits [rows, choices], or full-choice totals [rows])
    into each owner's [candidates, examples, choices] scores."""
    owners = torch.tensor([row.owner for row in chunk])
    candidates = torch.tensor([row.candidate for row in chunk])
    examples = torch.tensor([row.example for row in chunk])
    choices = torch.tensor([row.choice for row in chunk])
    for owner in owners.unique().tolist():
        picked = owners == owner
        first_candidate, first_example = offsets[owner]
        target = scores[owner]
        where = (candidates[picked] - first_candidate, examples[picked] - first_example)
        if values.dim() == 1:
            target[(*where, choices[picked])] = values[picked]
        else:
            target[where] = values[picked][:, : target.shape[-1]]
