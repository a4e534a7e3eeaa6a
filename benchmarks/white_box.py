"""White-box reference for the accuracy benchmark: gradient prompt tuning on the frozen model.

Benchmark-only and server-side (it needs the weights and autograd, which no client has): ``t``
free soft-prompt vectors sit where ``bbt-suffix`` puts its prompt, after the text and before the
answer cue, i.e. ``[bos][text][prompt x t][cue]``, and the loss is the cross-entropy over the
choice tokens' logits, as the engine scores them. Adam tunes the prompt on the whole 16-shot train
set each step (one step = one forward and backward pass over it); the prompt kept is the one with
the best dev accuracy so far (ties: lower dev loss). The text part does not depend on the prompt,
so its keys and values are computed once without gradients and every step runs only the prompt
and the cue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cbpt.server.engine.kv import encode_left_padded, forward_after
from cbpt.server.engine.prepare import leading_special_tokens
from cbpt.server.engine.readout import head_logits
from cbpt.server.model import ModelBundle


@dataclass(frozen=True)
class WhiteBoxConfig:
    prompt_length: int = 10
    learning_rate: float = 0.1  # Adam, on the prompt in units of the embedding std
    dev_every: int = 5  # steps between dev evaluations (and at every recorded step)
    batch_sequences: int = 64


@dataclass(frozen=True)
class Checkpoint:
    """The selected prompt's test log-probs after ``steps`` optimizer steps."""

    steps: int
    log_probs: np.ndarray  # [test examples, choices], log-softmax over the choices
    dev_accuracy: float
    seconds: float  # training wall time so far, dev evaluations included, test scoring excluded


@dataclass
class _TextBatch:
    """Keys/values of left-padded [bos][text] rows, computed once without gradients."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor  # [rows, past]
    lengths: torch.Tensor  # [rows]


class SoftPromptScorer:
    """Scores texts with a soft prompt before the cue, differentiably in the prompt."""

    def __init__(self, bundle: ModelBundle, cue: str, choices: Sequence[str], batch_sequences: int = 64):
        self.bundle = bundle
        self.model = bundle.model
        self.backbone = bundle.model.base_model
        self.embed = bundle.model.get_input_embeddings()
        self.head = bundle.model.get_output_embeddings()
        tokenizer = bundle.tokenizer
        self.bos = leading_special_tokens(tokenizer)
        self.pad_id = tokenizer.pad_token_id or 0
        self.cue_ids = torch.tensor(tokenizer(cue, add_special_tokens=False)["input_ids"], dtype=torch.long)
        firsts = [tokenizer(choice, add_special_tokens=False)["input_ids"][0] for choice in choices]
        if len(set(firsts)) != len(firsts):
            raise ValueError("two choices share their first token")
        self.choice_ids = torch.tensor(firsts, dtype=torch.long, device=bundle.device)
        self.batch_sequences = batch_sequences

    def _tokens(self, texts: Sequence[str]) -> list[list[int]]:
        tokenizer = self.bundle.tokenizer
        return [list(self.bos) + tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> _TextBatch:
        sequences = [tuple(tokens) for tokens in self._tokens(texts)]
        layers, mask = encode_left_padded(self.backbone, sequences, self.pad_id, self.bundle.device)
        return _TextBatch(layers, mask, mask.sum(-1))

    def batches(self, texts: Sequence[str]) -> Iterator[_TextBatch]:
        for start in range(0, len(texts), self.batch_sequences):
            yield self.encode(texts[start : start + self.batch_sequences])

    def logits(self, prompt: torch.Tensor, batch: _TextBatch) -> torch.Tensor:
        """Choice logits [rows, choices] (fp32) for ``prompt`` [t, hidden] after each text."""
        device, dtype = self.bundle.device, self.bundle.dtype
        rows = batch.mask.shape[0]
        cue = self.embed(self.cue_ids.to(device))
        tail = torch.cat([prompt.to(dtype), cue], dim=0)  # [t + cue, hidden]: the same for every row
        embeds = tail.unsqueeze(0).expand(rows, -1, -1)
        new = tail.shape[0]
        positions = batch.lengths[:, None] + torch.arange(new, device=device)[None, :]
        hidden = forward_after(
            self.backbone,
            self.model.config,
            batch.layers,
            batch.mask,
            embeds,
            batch.mask.new_ones(rows, new),
            positions,
        )
        last = hidden[:, -1]
        return head_logits(self.head, last, self.choice_ids.expand(rows, -1))

    @torch.no_grad()
    def log_probs(self, prompt: torch.Tensor, texts: Sequence[str]) -> np.ndarray:
        parts = [self.logits(prompt, batch).log_softmax(-1).cpu() for batch in self.batches(texts)]
        return torch.cat(parts).numpy().astype(np.float64)


def _initial_prompt(bundle: ModelBundle, length: int, seed: int) -> tuple[torch.Tensor, float]:
    """Embeddings of random vocabulary tokens, in units of the embedding std (and that std)."""
    weight = bundle.model.get_input_embeddings().weight.detach().float()
    scale = float(weight.std())
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, weight.shape[0], (length,), generator=generator)
    return (weight[tokens.to(weight.device)] / scale).clone(), scale


def tune(
    bundle: ModelBundle,
    *,
    cue: str,
    choices: Sequence[str],
    train: tuple[Sequence[str], np.ndarray],
    dev: tuple[Sequence[str], np.ndarray],
    test_texts: Sequence[str],
    record_at: Sequence[int],
    seed: int,
    config: WhiteBoxConfig = WhiteBoxConfig(),
    log: Callable[[str], None] | None = None,
) -> list[Checkpoint]:
    """Run max(record_at) Adam steps; at each step in ``record_at`` score the selected prompt on the test
    texts."""
    scorer = SoftPromptScorer(bundle, cue, choices, config.batch_sequences)
    device = bundle.device
    started = time.perf_counter()
    train_batches = list(scorer.batches(train[0]))
    dev_batches = list(scorer.batches(dev[0]))
    train_labels = torch.as_tensor(train[1], dtype=torch.long, device=device)
    dev_labels = torch.as_tensor(dev[1], dtype=torch.long, device=device)
    initial, scale = _initial_prompt(bundle, config.prompt_length, seed)
    weights = initial.to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=config.learning_rate)
    best: tuple[float, float] | None = None  # (dev accuracy, -dev loss)
    best_prompt = weights.detach().clone()
    records, training_seconds = [], 0.0
    for step in range(1, max(record_at) + 1):
        optimizer.zero_grad(set_to_none=True)
        total = len(train_labels)
        offset, train_loss = 0, 0.0
        for batch in train_batches:
            rows = batch.mask.shape[0]
            logits = scorer.logits(weights * scale, batch)
            loss = torch.nn.functional.cross_entropy(
                logits, train_labels[offset : offset + rows], reduction="sum"
            )
            (loss / total).backward()
            offset += rows
            train_loss += float(loss.detach()) / total
        optimizer.step()
        if step % config.dev_every == 0 or step in record_at:
            with torch.no_grad():
                dev_logits = torch.cat([scorer.logits(weights * scale, b) for b in dev_batches])
                accuracy = float((dev_logits.argmax(-1) == dev_labels).float().mean())
                dev_loss = float(torch.nn.functional.cross_entropy(dev_logits, dev_labels))
            if best is None or (accuracy, -dev_loss) > best:
                best, best_prompt = (accuracy, -dev_loss), weights.detach().clone()
            if log is not None:
                log(
                    f"step {step}/{max(record_at)}: train loss {train_loss:.4f}, dev accuracy "
                    f"{100 * accuracy:.1f}% (best {100 * best[0]:.1f}%), "
                    f"{training_seconds + time.perf_counter() - started:.1f} s"
                )
        if step in record_at:
            assert best is not None
            training_seconds += time.perf_counter() - started
            log_probs = scorer.log_probs(best_prompt * scale, test_texts)
            records.append(Checkpoint(step, log_probs, best[0], training_seconds))
            started = time.perf_counter()
    return records
