"""Grouped-query attention that never repeats keys and values per query head.

SmolLM2 has 9 query heads over 3 key/value heads. With a padding mask, transformers' SDPA path
copies every key and value three times (``repeat_kv``) in every layer of every pass; on CPU that
copy, of the cached text states above all, took more time than the matmuls of the on-cue path
(docs/capacity.md has the profile). Here the query heads that share a key/value head are folded into
the query axis instead ([batch, kv_heads, groups x queries, head_dim]), so SDPA reads each key and
value once: the same attention, and the same mask row for each folded query.

The engine switches a model to this function around its own forward passes only
(``grouped_attention``), and only where the model runs transformers' SDPA; any other
implementation is left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.nn.functional import scaled_dot_product_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GROUPED = "cbpt_grouped_sdpa"


def grouped_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of query [b, heads, q, d] over key/value [b, kv_heads, k, d]; output [b, q, heads, d]."""
    batch, heads, queries, dim = query.shape
    kv_heads = key.shape[1]
    unusual = kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
    if attention_mask is None or heads == kv_heads or unusual or attention_mask.dtype != torch.bool:
        return sdpa_attention_forward(  # no copy to avoid: transformers' own path
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    groups = heads // kv_heads
    folded = query.reshape(batch, kv_heads, groups * queries, dim)
    mask = attention_mask
    if mask.shape[1] == 1:  # one mask row per query, shared by every head: repeat it per folded head
        mask = mask[:, :, None].expand(-1, -1, groups, -1, -1).reshape(mask.shape[0], 1, groups * queries, -1)
    else:  # one per head
        mask = mask.reshape(mask.shape[0], kv_heads, groups * queries, mask.shape[-1])
    output = scaled_dot_product_attention(
        folded, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling
    )
    return output.reshape(batch, heads, queries, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED, grouped_sdpa)
AttentionMaskInterface.register(GROUPED, sdpa_mask)  # the masks SDPA gets, so nothing else changes


@contextmanager
def attention(config: Any, grouped: bool) -> Iterator[None]:
    """Run the model's forward passes inside with grouped attention (when ``grouped`` and the model
    uses SDPA), then put its own implementation back."""
    previous = getattr(config, "_attn_implementation", None)
    if not grouped or previous != "sdpa":
        yield
        return
    config._attn_implementation = GROUPED
    try:
        yield
    finally:
        config._attn_implementation = previous
