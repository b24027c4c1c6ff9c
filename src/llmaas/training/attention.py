"""Per-example causal attention over a padding-free ("flattened") row, without flash-attn.

transformers' own answer to packed rows on CPU is SDPA with an explicit block-diagonal [L, L] mask: every
query still attends over the whole row (quadratic in the row length, mostly masked out) and the explicit mask
rules out the causal fast path. Here the row is instead cut at the example boundaries (`seq_lens`, passed
through the model's forward kwargs) and each piece runs SDPA with `is_causal=True`: exact per-example
attention, no wasted score computations, no mask tensor.

The function is registered under its own attention-implementation name. transformers builds no mask at all
for an implementation it has no mask function for, which is what we want. Without `seq_lens` a row is one
example, and plain causal attention is exact.
"""

from __future__ import annotations

from typing import Any

ATTN_IMPLEMENTATION = "llmaas_varlen"


def _varlen_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                 scaling: float | None = None, seq_lens: list[int] | None = None, **_: Any) -> tuple[Any, None]:
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    if attention_mask is not None:
        raise ValueError(f"{ATTN_IMPLEMENTATION} attention takes no mask (flattened rows only)")
    # GQA without repeat_kv: the CPU flash kernel takes enable_gqa (measured ~10% faster fwd+bwd than repeating).
    gqa = {"enable_gqa": True} if getattr(module, "num_key_value_groups", 1) > 1 else {}
    if seq_lens is None or len(seq_lens) == 1:
        out = sdpa(query, key, value, dropout_p=dropout, scale=scaling, is_causal=True, **gqa)
    else:
        pieces = []
        start = 0
        for n in seq_lens:
            end = start + n
            pieces.append(sdpa(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                               dropout_p=dropout, scale=scaling, is_causal=True, **gqa))
            start = end
        out = torch.cat(pieces, dim=2)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make the attention implementation known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, _varlen_sdpa)
    return ATTN_IMPLEMENTATION
