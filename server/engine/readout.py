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


Where = tuple[torch.Tensor, torch.Tensor]  # per row: its sequence in the pass, its last position


def read_first_tokens(
    head: torch.nn.Linear,
    hidden: torch.Tensor,
    where: Where,
    chunk: list[Row],
    choices: list[list[tuple[int, ...]]],
) -> torch.Tensor:
    """One logit per choice (its first token) at each row's last position: [rows, max choices], pads -inf."""
    firsts = [[option[0] for option in choices[row.example]] for row in chunk]
    width = max(map(len, firsts))
    ids = torch.tensor([own + [0] * (width - len(own)) for own in firsts], dtype=torch.long)
    valid = torch.tensor([[True] * len(own) + [False] * (width - len(own)) for own in firsts])
    last = hidden[where]
    return head_logits(head, last, ids.to(hidden.device)).cpu().masked_fill(~valid, -torch.inf)


def read_full_choices(
    head: torch.nn.Linear, hidden: torch.Tensor, where: Where, chunk: list[Row]
) -> torch.Tensor:
    """Per row, the sum of log p(choice token | all before it): [rows], from a full-vocabulary softmax
    at those positions only."""
    row_index: list[int] = []
    sequence_index: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    sequences, ends = (part.tolist() for part in where)
    for index, row in enumerate(chunk):
        end = ends[index]
        row_index += [index] * row.scored
        sequence_index += [sequences[index]] * row.scored
        positions += range(end - row.scored, end)
        targets += row.tokens[len(row.tokens) - row.scored :]
    device = hidden.device
    picked = hidden[
        torch.tensor(sequence_index, device=device), torch.tensor(positions, device=device)
    ].float()
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
