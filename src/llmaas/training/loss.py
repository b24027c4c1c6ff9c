"""Cross-entropy through the frozen LM head, on the loss positions only, without materialising the logits.

A causal-LM forward normally computes logits for every position ([tokens, vocab] float32: 49152 wide for
SmolLM2, ~200 KB per token) and the loss then ignores all but the assistant tokens (~1/3 of a chat). Here the
hidden states of the target positions are gathered first, and the LM head + softmax run on those in chunks.
The head is frozen (LoRA never trains it), so the only gradient needed is w.r.t. the hidden states, which is
computed chunk by chunk during the forward pass: peak memory is one chunk of logits, not the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch

_CHUNK = 1024  # positions per logits chunk: 1024 x 49152 x 4 B = 200 MB


class _FrozenHeadCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grad = torch.empty_like(hidden) if hidden.requires_grad else None
        loss_sum = hidden.new_zeros((), dtype=torch.float32)
        n_correct = torch.zeros((), dtype=torch.long)
        for s in range(0, hidden.shape[0], _CHUNK):
            h, t = hidden[s:s + _CHUNK].to(weight.dtype), targets[s:s + _CHUNK]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            loss_sum += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            n_correct += (logits.argmax(dim=-1) == t).sum()
            if grad is not None:
                # d(sum CE)/d logits = softmax - onehot
                probs = torch.exp_(logits.sub_(lse[:, None]))
                probs[torch.arange(len(t)), t] -= 1.0
                grad[s:s + _CHUNK] = (probs @ weight.float()).to(hidden.dtype)
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(n_correct)
        return loss_sum, n_correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_correct: Any) -> tuple[Any, None, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_loss, None, None


def frozen_head_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor,
                              targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of top-1 hits) for `hidden` [n, d] through the frozen head `weight` [vocab, d].

    The loss sum is differentiable w.r.t. `hidden` (e.g. `(loss_sum / n_step_tokens).backward()`).
    """
    if weight.requires_grad:
        raise ValueError("frozen_head_cross_entropy needs a frozen LM head")
    loss_sum, n_correct = _FrozenHeadCE.apply(hidden, weight, targets)
    return loss_sum, n_correct
