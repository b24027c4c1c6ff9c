"""Per-example causal attention over a padding-free ("flattened") row, without flash-attn.

transformers' own answer to packed rows on CPU is SDPA with an explicit block-diagonal [L, L] mask: every
query still attends over the whole row (quadratic in the row length, mostly masked out) and the explicit mask
rules out the causal fast path. Here the row is instead cut at the example boundaries (`seq_lens`, passed
through the model's forward kwargs) and each piece runs SDPA with `is_causal=True`: exact per-example
attention, no wasted score computations, no mask tensor.

The function is registered under its own attention-implementation name. transformers builds no mask at all
for an implementation it has no mask function for, which is what we want. Without `seq_lens` a row is one
example, and plain causal attention is exact.

Sliding-window layers (Gemma 3's local layers) pass `sliding_window`: a query then sees itself and the
`sliding_window - 1` tokens before it, as in transformers' and llama.cpp's masks. An example no longer than the
window needs no more than the causal fast path; a longer one gets an explicit banded mask.
"""

from __future__ import annotations

from typing import Any

ATTN_IMPLEMENTATION = "llmaas_varlen"


def _causal(query: Any, key: Any, value: Any, window: int | None, **kw: Any) -> Any:
    """Causal SDPA over one example, limited to the last `window` keys when it is longer than that."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    n = query.shape[2]
    if window is None or n <= window:
        return sdpa(query, key, value, is_causal=True, **kw)
    i = torch.arange(n)
    dist = i[:, None] - i[None, :]  # query index - key index
    return sdpa(query, key, value, attn_mask=(dist >= 0) & (dist < window), **kw)


def _varlen_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                 scaling: float | None = None, seq_lens: list[int] | None = None, sliding_window: int | None = None,
                 softcap: float | None = None, **_: Any) -> tuple[Any, None]:
    import torch

    if attention_mask is not None:
        raise ValueError(f"{ATTN_IMPLEMENTATION} attention takes no mask (flattened rows only)")
    if softcap is not None:  # SDPA cannot cap scores (Gemma 2 does; Gemma 3 does not)
        raise NotImplementedError(f"{ATTN_IMPLEMENTATION} attention does not support attention logit softcapping")
    # GQA without repeat_kv: the CPU flash kernel takes enable_gqa (measured ~10% faster fwd+bwd than repeating).
    kw = {"dropout_p": dropout, "scale": scaling}
    if getattr(module, "num_key_value_groups", 1) > 1:
        kw["enable_gqa"] = True
    if seq_lens is None or len(seq_lens) == 1:
        out = _causal(query, key, value, sliding_window, **kw)
    else:
        pieces = []
        start = 0
        for n in seq_lens:
            end = start + n
            pieces.append(_causal(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                  sliding_window, **kw))
            start = end
        out = torch.cat(pieces, dim=2)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make the attention implementation known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, _varlen_sdpa)
    return ATTN_IMPLEMENTATION
