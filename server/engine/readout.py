"""Reading choice scores off the last hidden states: only the LM-head rows a choice needs.

First-token scoring computes one logit per choice at each sequence's last
position; full-choice scoring needs the full-vocabulary softmax, but only at
the positions that predict a choice token. Nothing here ever leaves the server.
"""

from __future__ import annotations

import torch

from cbpt.server.engine.plan import Row


def head_logits(head: torch.nn.Linear, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Logits of only the ``token_ids`` rows of the LM head, in fp32: hidden [n, d], ids [n, c]."""
    rows = head.weight[token_ids].float()
    logits = (rows @ hidden.float().unsqueeze(-1)).squeeze(-1)
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[token_ids].float()
    return logits


def read_first_tokens(
    head: torch.nn.Linear,
    hidden: torch.Tensor,
    ends: torch.Tensor,
    chunk: list[Row],
    choices: list[list[tuple[int, ...]]],
) -> torch.Tensor:
    """One logit per choice (its first token) at each row's last position: [rows, max choices], pads -inf."""
    max_choices = max(len(choices[row.example]) for row in chunk)
    ids = torch.zeros((len(chunk), max_choices), dtype=torch.long)
    valid = torch.zeros((len(chunk), max_choices), dtype=torch.bool)
    for index, row in enumerate(chunk):
        firsts = [option[0] for option in choices[row.example]]
        ids[index, : len(firsts)] = torch.tensor(firsts)
        valid[index, : len(firsts)] = True
    last = hidden[torch.arange(len(chunk), device=hidden.device), ends.to(hidden.device)]
    return head_logits(head, last, ids.to(hidden.device)).cpu().masked_fill(~valid, -torch.inf)


def read_full_choices(
    head: torch.nn.Linear, hidden: torch.Tensor, ends: torch.Tensor, chunk: list[Row]
) -> torch.Tensor:
    """Per row, the sum of log p(choice token | all before it): [rows], from a full-vocabulary softmax
    at those positions only."""
    row_index: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    for index, row in enumerate(chunk):
        end = int(ends[index])
        row_index += [index] * row.scored
        positions += range(end - row.scored, end)
        targets += row.tokens[len(row.tokens) - row.scored :]
    device = hidden.device
    picked = hidden[torch.tensor(row_index, device=device), torch.tensor(positions, device=device)].float()
    logits = picked @ head.weight.float().T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias.float()
    token_log_probs = (
        logits.log_softmax(-1).gather(-1, torch.tensor(targets, device=device)[:, None]).squeeze(-1)
    )
    totals = torch.zeros(len(chunk), device=device).index_add_(
        0, torch.tensor(row_index, device=device), token_log_probs
    )
    return totals.cpu()
