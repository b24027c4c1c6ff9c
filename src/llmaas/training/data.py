"""Chat examples -> token ids + loss mask, and deterministic micro-batches for training.

Tokenization follows the serving engine, through its own renderer (engine/chat_template.py): the model's chat
template is rendered with each message's content replaced by a unique marker, template text is tokenized with
special tokens parsed and content as plain text (so a user typing `<|im_end|>` gets text tokens, exactly as at
inference time). Because every content span
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
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmaas.core.chat_jsonl import content_text
from llmaas.core.errors import InvalidRequestError
from llmaas.engine.chat_template import ChatMessage, ChatTemplate, template_for

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
    """Renders chats into (input_ids, loss_mask) with the serving engine's chat template renderer
    (engine/chat_template.py) and a Hugging Face tokenizer.

    `chat_template` and `add_bos` are what llama.cpp serves the model with (see `for_gguf`); they default to
    the tokenizer's own. BOS is placed like the engine does: prepended when the model wants one and the
    template did not render it already.
    """

    def __init__(self, tokenizer: Any, chat_template: str | None = None, add_bos: bool | None = None) -> None:
        self._tok = tokenizer
        source = chat_template or getattr(tokenizer, "chat_template", None)
        if not source:
            raise ValueError("the tokenizer has no chat template")
        self._template = ChatTemplate(source, tokenizer.bos_token or "", tokenizer.eos_token or "")
        vocab = tokenizer.get_vocab()
        self._end_ids = {vocab[t] for t in _END_OF_TURN if t in vocab}
        if tokenizer.eos_token_id is not None:
            self._end_ids.add(int(tokenizer.eos_token_id))
        if add_bos is None:
            add_bos = bool(getattr(tokenizer, "add_bos_token", False))
        self._bos_id = tokenizer.bos_token_id if add_bos else None

    @classmethod
    def for_gguf(cls, tokenizer: Any, gguf_path: str | os.PathLike[str]) -> ChatEncoder:
        """The encoder for the model the engine serves from `gguf_path`: its chat template (the GGUF's own, or
        its architecture's) and its BOS rule."""
        from llmaas.training.base_model import read_gguf_arch

        arch = read_gguf_arch(Path(gguf_path))
        return cls(tokenizer, template_for(arch.chat_template, arch.architecture), arch.add_bos_token)

    def _encode(self, text: str, special: bool) -> list[int]:
        if not text:
            return []
        return list(self._tok.encode(text, add_special_tokens=False, split_special_tokens=not special))

    def encode(self, messages: Sequence[dict[str, Any]], max_seq_len: int | None = None) -> Example:
        chat = [ChatMessage(str(m.get("role")), content_text(m.get("content"), strict=False) or "")
                for m in messages]
        try:
            pieces = self._template.render(chat, add_generation_prompt=False)
        except InvalidRequestError as e:
            raise ValueError(e.message) from None
        ids: list[int] = []
        mask: list[bool] = []
        pending_end = False  # the previous span was trained assistant content: its end-of-turn token is a target
        for text, idx in pieces:
            if idx is None:
                toks = self._encode(text, special=True)
                ids += toks
                mask += [pending_end and j == 0 and t in self._end_ids for j, t in enumerate(toks)]
                pending_end = False
                continue
            msg = messages[idx]
            train = msg.get("role") == "assistant" and msg.get("weight", 1) != 0
            toks = self._encode(text, special=False)
            ids += toks
            mask += [train] * len(toks)
            pending_end = train
        if self._bos_id is not None and (not ids or ids[0] != self._bos_id):
            ids, mask = [int(self._bos_id), *ids], [False, *mask]
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
