"""Cross-entropy through the frozen LM head, on the loss positions only, without materialising the logits.

A causal-LM forward normally computes logits for every position ([tokens, vocab] float32: 49152 wide for
SmolLM2, 262144 for Gemma 3, ~1 MB per token) and the loss then ignores all but the assistant tokens. Here the
hidden states of the target positions are gathered first, and the LM head + softmax run on those in chunks.
The head is frozen (LoRA never trains it), so the only gradient needed is w.r.t. the hidden states, which is
computed chunk by chunk during the forward pass: peak memory is one chunk of logits, not the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch

_CHUNK_FLOATS = 1 << 26  # logits per chunk (256 MB of float32): 1365 positions of SmolLM2, 256 of Gemma 3


class _FrozenHeadCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                softcap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        grad = torch.empty_like(hidden) if hidden.requires_grad else None
        loss_sum = hidden.new_zeros((), dtype=torch.float32)
        n_correct = torch.zeros((), dtype=torch.long)
        chunk = max(1, _CHUNK_FLOATS // weight.shape[0])
        for s in range(0, hidden.shape[0], chunk):
            h, t = hidden[s:s + chunk].to(weight.dtype), targets[s:s + chunk]
            logits = (h @ weight.t()).float()
            if softcap is not None:  # logits = cap * tanh(z / cap), as the model's own forward does
                capped = torch.tanh_(logits.div_(softcap))
                logits = capped * softcap
            lse = torch.logsumexp(logits, dim=-1)
            loss_sum += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            n_correct += (logits.argmax(dim=-1) == t).sum()
            if grad is not None:
                # d(sum CE)/d logits = softmax - onehot; through the cap, times d tanh = 1 - tanh^2
                probs = torch.exp_(logits.sub_(lse[:, None]))
                probs[torch.arange(len(t)), t] -= 1.0
                if softcap is not None:
                    probs.mul_(1.0 - capped.square_())
                grad[s:s + chunk] = (probs @ weight.float()).to(hidden.dtype)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(n_correct)
        return loss_sum, n_correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_correct: Any) -> tuple[Any, None, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None, None


def frozen_head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                              softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of top-1 hits) for `hidden` [n, d] through the frozen head `weight` [vocab, d].

    `softcap`: the model's final logit softcapping (`cap * tanh(logits / cap)`), if it has one.
    The loss sum is differentiable w.r.t. `hidden` (e.g. `(loss_sum / n_step_tokens).backward()`).
    """
    if weight.requires_grad:
        raise ValueError("frozen_head_cross_entropy needs a frozen LM head")
    loss_sum, n_correct = _FrozenHeadCE.apply(hidden, weight, targets, softcap)
    return loss_sum, n_correct
