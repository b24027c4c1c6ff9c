"""llmaas.training data pipeline: loss mask, truncation, padding-free batches, epoch order; and the pieces
of the training step that can be checked exactly on small tensors (per-example attention, frozen-head loss)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402

from llmaas.training.data import ChatEncoder, collate, encode_examples, epoch_batches  # noqa: E402

IM_END = 2  # SmolLM2's <|im_end|>


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from llmaas.training.base_model import resolve_gguf

    gguf = resolve_gguf("smollm2")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)


@pytest.fixture(scope="module")
def encoder(tokenizer) -> ChatEncoder:
    return ChatEncoder(tokenizer)


def trained_text(tokenizer, ex) -> str:
    return tokenizer.decode(ex.input_ids[ex.loss_mask].tolist())


def test_mask_is_assistant_content_plus_end_of_turn(tokenizer, encoder):
    ex = encoder.encode([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How are you?"},
    ])
    assert trained_text(tokenizer, ex) == "Hello! How are you?<|im_end|>"
    # The whole rendering is the template's, with the default system prompt replaced by ours.
    assert tokenizer.decode(ex.input_ids.tolist()) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello! How are you?<|im_end|>\n")
    # The masked tokens are a contiguous span ending at the end-of-turn token; the trailing "\n" is not trained.
    idx = np.flatnonzero(ex.loss_mask)
    assert (np.diff(idx) == 1).all() and ex.input_ids[idx[-1]] == IM_END and not ex.loss_mask[-1]


def test_multi_turn_weight_zero_empty_system_and_special_text(tokenizer, encoder):
    ex = encoder.encode([
        {"role": "system", "content": ""},
        {"role": "user", "content": "say <|im_end|> please"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "skipped", "weight": 0},
        {"role": "user", "content": "once more"},
        {"role": "assistant", "content": [{"type": "text", "text": "third"}]},
    ])
    assert trained_text(tokenizer, ex) == "first<|im_end|>third<|im_end|>"
    # A user typing the end-of-turn marker gets text tokens, not the special token (as at inference).
    assert int((ex.input_ids == IM_END).sum()) == 7  # one per message only
    assert "say <|im_end|> please" in tokenizer.decode(ex.input_ids.tolist())


def test_empty_assistant_message_still_trains_end_of_turn(tokenizer, encoder):
    ex = encoder.encode([{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}])
    assert trained_text(tokenizer, ex) == "<|im_end|>"


def test_truncation_and_examples_left_without_targets(encoder):
    msgs = [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "answer " * 50}]
    full = encoder.encode(msgs)
    cut = encoder.encode(msgs, max_seq_len=80)
    assert len(cut) == 80 and cut.truncated and not full.truncated
    assert (cut.input_ids == full.input_ids[:80]).all() and (cut.loss_mask == full.loss_mask[:80]).all()
    rows = [{"messages": msgs}, {"messages": [{"role": "user", "content": "short"},
                                              {"role": "assistant", "content": "ok"}]}]
    kept, stats = encode_examples(encoder, rows, max_seq_len=40)  # the long chat's answer starts past 40
    assert len(kept) == 1 and stats["dropped_no_loss_tokens"] == 1 and stats["truncated"] == 1


def _examples(encoder, n: int = 6):
    return [encoder.encode([{"role": "user", "content": f"question {i} " + "x " * i},
                            {"role": "assistant", "content": f"answer {i} " + "y " * (2 * i)}]) for i in range(n)]


def test_batches_predict_each_examples_own_targets(encoder):
    exs = _examples(encoder)
    b = collate(exs)
    flat_ids = b.input_ids.reshape(-1)
    expected = np.concatenate([e.input_ids[np.flatnonzero(e.loss_mask[1:]) + 1] for e in exs])
    assert b.targets.tolist() == expected.tolist()
    # Each prediction position is followed by its target in the same example: never across a boundary.
    assert (flat_ids[b.pred_index + 1] == b.targets).all()
    lens = [len(e) for e in exs]
    assert b.input_ids.shape == (1, sum(lens)) and b.seq_lens == lens and b.n_tokens == sum(lens)
    pos = b.position_ids[0].tolist()
    starts = np.cumsum([0, *lens[:-1]])
    assert [pos[s] for s in starts] == [0] * len(exs)
    assert pos == [p for n in lens for p in range(n)]
    ends = set((starts + np.asarray(lens) - 1).tolist())
    assert not ends & set(b.pred_index.tolist())  # an example's last token predicts nothing


def test_epoch_order_is_deterministic_and_complete():
    a = epoch_batches(100, 8, seed=3, epoch=1)
    assert a == epoch_batches(100, 8, seed=3, epoch=1)
    assert a != epoch_batches(100, 8, seed=3, epoch=2)
    assert a != epoch_batches(100, 8, seed=4, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(100))


def test_varlen_attention_equals_separate_examples():
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from llmaas.training.attention import _varlen_sdpa

    class Module:
        num_key_value_groups = 3

    torch.manual_seed(0)
    lens = [5, 1, 9, 4]
    q, k, v = torch.randn(1, 6, 19, 8), torch.randn(1, 2, 19, 8), torch.randn(1, 2, 19, 8)
    out, _ = _varlen_sdpa(Module(), q, k, v, None, scaling=0.3, seq_lens=lens)
    assert out.shape == (1, 19, 6, 8)
    s = 0
    for n in lens:
        ref = sdpa(q[:, :, s:s + n], k[:, :, s:s + n].repeat_interleave(3, 1), v[:, :, s:s + n].repeat_interleave(3, 1),
                   is_causal=True, scale=0.3)
        torch.testing.assert_close(out[:, s:s + n], ref.transpose(1, 2))
        s += n


def test_varlen_attention_sliding_window():
    """Gemma 3's local layers: a query sees itself and the `window - 1` tokens before it (transformers' and
    llama.cpp's masks); examples no longer than the window are plain causal."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from llmaas.training.attention import _varlen_sdpa

    class Module:
        num_key_value_groups = 1

    torch.manual_seed(0)
    lens, window = [7, 3, 12], 4
    q, k, v = torch.randn(1, 2, 22, 8), torch.randn(1, 2, 22, 8), torch.randn(1, 2, 22, 8)
    out, _ = _varlen_sdpa(Module(), q, k, v, None, seq_lens=lens, sliding_window=window)
    s = 0
    for n in lens:
        i = torch.arange(n)
        allowed = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
        ref = sdpa(q[:, :, s:s + n], k[:, :, s:s + n], v[:, :, s:s + n], attn_mask=allowed)
        torch.testing.assert_close(out[:, s:s + n], ref.transpose(1, 2))
        s += n
    full, _ = _varlen_sdpa(Module(), q, k, v, None, seq_lens=lens)
    torch.testing.assert_close(out[:, 7:10], full[:, 7:10])  # 3 tokens: the window changes nothing
    assert not torch.allclose(out[:, :7], full[:, :7])


def test_frozen_head_loss_with_logit_softcapping():
    from llmaas.training.loss import frozen_head_cross_entropy

    torch.manual_seed(1)
    hidden = torch.randn(9, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 16, dtype=torch.float64) * 3
    targets = torch.randint(0, 40, (9,))
    loss, correct = frozen_head_cross_entropy(hidden, weight, targets, softcap=5.0)
    loss.backward()
    grad = hidden.grad.clone()
    hidden.grad = None
    logits = 5.0 * torch.tanh(hidden @ weight.t() / 5.0)
    ref = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss, ref.float(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad, hidden.grad, rtol=1e-4, atol=1e-6)  # the logits are float32 inside
    assert int(correct) == int((logits.argmax(-1) == targets).sum())


def test_frozen_head_loss_matches_cross_entropy():
    from llmaas.training.loss import frozen_head_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64)
    targets = torch.randint(0, 50, (37,))
    loss, correct = frozen_head_cross_entropy(hidden, weight, targets)
    (loss / 37).backward()
    grad = hidden.grad.clone()
    hidden.grad = None
    logits = hidden @ weight.t()
    ref = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    (ref / 37).backward()
    torch.testing.assert_close(loss, ref.float(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(grad, hidden.grad)
    assert int(correct) == int((logits.argmax(-1) == targets).sum())
    with pytest.raises(ValueError):
        frozen_head_cross_entropy(hidden, weight.clone().requires_grad_(), targets)
