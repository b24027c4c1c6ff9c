"""Chat examples -> token ids + loss mask, and deterministic micro-batches for training.

Tokenization follows the serving engine: the model's chat template is rendered with each message's content
replaced by a unique marker, template text is tokenized with special tokens parsed and content as plain text
(so a user typing `<|im_end|>` gets text tokens, exactly as at inference time). Because every content span
is tokenized on its own, the loss mask is exact: it covers the tokens of each assistant message's content
plus the end-of-turn token that closes it (so the model learns to stop), and nothing of system/user turns
or of the template's role headers. An assistant message with `"weight": 0` (OpenAI fine-tuning format)
is context only: no loss on it.

Batching: the `batch_size` examples of a micro-batch are concatenated into ONE row with position ids
restarting at 0 for each example and per-example causal attention (see `attention.py`): no pad token is ever
computed and no example attends to another.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmaas.core.chat_jsonl import content_text

log = logging.getLogger("llmaas.training.data")

# End-of-turn tokens of common chat templates; whichever exists in the vocabulary closes an assistant turn.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclass(frozen=True, slots=True)
class Example:
    """One tokenized chat: `loss_mask[i]` says whether token i is a training target."""

    input_ids: np.ndarray  # int64 [n]
    loss_mask: np.ndarray  # bool [n]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_loss_tokens(self) -> int:
        # Token 0 is never predicted (nothing precedes it), so it never counts.
        return int(self.loss_mask[1:].sum())


class ChatEncoder:
    """Renders chats with a Hugging Face tokenizer's chat template into (input_ids, loss_mask)."""

    def __init__(self, tokenizer: Any, chat_template: str | None = None) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self._tok = tokenizer
        source = chat_template or getattr(tokenizer, "chat_template", None)
        if not source:
            raise ValueError("the tokenizer has no chat template")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(msg: str) -> None:
            raise ValueError(f"chat template rejected the messages: {msg}")

        env.globals["raise_exception"] = raise_exception
        self._template = env.from_string(source)
        self._bos_text = tokenizer.bos_token or ""
        self._eos_text = tokenizer.eos_token or ""
        vocab = tokenizer.get_vocab()
        self._end_ids = {vocab[t] for t in _END_OF_TURN if t in vocab}
        if tokenizer.eos_token_id is not None:
            self._end_ids.add(int(tokenizer.eos_token_id))
        # Mirror llama.cpp: a BOS is prepended only when the model asks for it.
        self._bos_id = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None

    def _encode(self, text: str, special: bool) -> list[int]:
        if not text:
            return []
        return list(self._tok.encode(text, add_special_tokens=False, split_special_tokens=not special))

    def encode(self, messages: Sequence[dict[str, Any]], max_seq_len: int | None = None) -> Example:
        markers = [f"\x00c{i}{secrets.token_hex(6)}\x00" for i in range(len(messages))]
        rendered = [{**m, "content": k} for m, k in zip(messages, markers, strict=True)]
        text = self._template.render(messages=rendered, add_generation_prompt=False, bos_token=self._bos_text,
                                     eos_token=self._eos_text)
        ids: list[int] = [] if self._bos_id is None else [int(self._bos_id)]
        mask: list[bool] = [False] * len(ids)
        pending_end = False  # the previous span was trained assistant content: its end-of-turn token is a target
        rest = text
        while rest:
            hits = [(rest.find(k), i) for i, k in enumerate(markers) if k in rest]
            pos, idx = min(hits) if hits else (len(rest), -1)
            if pos:
                toks = self._encode(rest[:pos], special=True)
                ids += toks
                mask += [pending_end and j == 0 and t in self._end_ids for j, t in enumerate(toks)]
            pending_end = False
            if idx < 0:
                break
            msg = messages[idx]
            toks = self._encode(content_text(msg.get("content"), strict=False) or "", special=False)
            train = msg.get("role") == "assistant" and msg.get("weight", 1) != 0
            ids += toks
            mask += [train] * len(toks)
            pending_end = train
            rest = rest[pos + len(markers[idx]):]
        truncated = max_seq_len is not None and len(ids) > max_seq_len
        if truncated:
            ids, mask = ids[:max_seq_len], mask[:max_seq_len]
        return Example(np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool), truncated)


def encode_examples(encoder: ChatEncoder, rows: Iterable[dict[str, Any]], max_seq_len: int,
                    on_progress: Callable[[], None] | None = None) -> tuple[list[Example], dict[str, int]]:
    """Tokenize `{"messages": [...]}` rows; rows left without any loss token (e.g. truncated away) are dropped."""
    out: list[Example] = []
    stats = {"rows": 0, "kept": 0, "truncated": 0, "dropped_no_loss_tokens": 0, "tokens": 0, "loss_tokens": 0}
    for row in rows:
        stats["rows"] += 1
        ex = encoder.encode(row["messages"], max_seq_len)
        stats["truncated"] += ex.truncated
        if ex.n_loss_tokens == 0:
            stats["dropped_no_loss_tokens"] += 1
            continue
        out.append(ex)
        stats["kept"] += 1
        stats["tokens"] += len(ex)
        stats["loss_tokens"] += ex.n_loss_tokens
        if on_progress is not None and stats["rows"] % 64 == 0:
            on_progress()
    return out, stats


def epoch_batches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The micro-batches (lists of example indices) of one epoch: a pure function of (seed, epoch).

    Resuming needs nothing but the epoch number and the position in this list.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n_examples).tolist()
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass(slots=True)
class Batch:
    """Model inputs of one micro-batch, and where its loss targets are.

    `pred_index` indexes the hidden states of the single row: position p predicts `targets[k]`.
    `seq_lens` are the lengths of the examples laid end to end in the row.
    """

    input_ids: Any  # torch.LongTensor [1, n_tokens]
    position_ids: Any  # torch.LongTensor [1, n_tokens]
    pred_index: Any  # torch.LongTensor [n_targets]
    targets: Any  # torch.LongTensor [n_targets]
    seq_lens: list[int]
    n_tokens: int

    @property
    def n_targets(self) -> int:
        return int(self.targets.shape[0])


def collate(examples: Sequence[Example]) -> Batch:
    import torch

    lens = [len(e) for e in examples]
    offsets = np.cumsum([0, *lens[:-1]])
    ids = np.concatenate([e.input_ids for e in examples])[None, :]
    pos = np.concatenate([np.arange(n) for n in lens])[None, :]
    pred, tgt = [], []
    for off, e in zip(offsets, examples, strict=True):
        j = np.flatnonzero(e.loss_mask[1:]) + 1  # target positions within the example (never its first token)
        pred.append(off + j - 1)
        tgt.append(e.input_ids[j])
    return Batch(
        input_ids=torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)),
        position_ids=torch.from_numpy(np.ascontiguousarray(pos, dtype=np.int64)),
        pred_index=torch.from_numpy(np.concatenate(pred).astype(np.int64)),
        targets=torch.from_numpy(np.concatenate(tgt).astype(np.int64)),
        seq_lens=lens,
        n_tokens=int(sum(lens)),
    )
