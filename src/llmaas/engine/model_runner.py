"""The narrow interface between the batching scheduler and a model: token ids in, logits out.

A runner is driven from one thread only (the scheduler's); it never sees text beyond tokenizing.
Exceptions: `load_adapter` may run on another thread (it only reads the model), and `embed`/`score`
use contexts of their own.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from llmaas.engine.scoring import ScoreItem
from llmaas.engine.types import SamplingParams, TokenLogprob


class Sampler(Protocol):
    def sample(self, batch_index: int) -> int:
        """Pick (and accept) the next token from the logits at `batch_index` of the last decode."""

    def close(self) -> None: ...


class ModelRunner(Protocol):
    model_id: str
    n_vocab: int
    n_slots: int  # sequence ids 0..n_slots-1
    context_size: int  # per sequence
    max_batch_tokens: int
    # engine.types GENERATIVE, or EMBEDDINGS_ONLY for an encoder: then only tokenize, embed and the KV
    # calls (no-ops) are used, and decode and scoring raise InvalidRequestError.
    capabilities: tuple[str, ...]

    def tokenize(self, text: str, *, special: bool) -> list[int]: ...
    def token_bytes(self, token: int) -> bytes: ...
    def eog_tokens(self) -> list[int]: ...
    def bos_token(self) -> int | None:
        """The BOS id if the model wants one prepended, else None."""

    def chat_template(self) -> str | None: ...
    def special_token_text(self, name: str) -> str: ...

    def decode(self, tokens: list[int], positions: list[int], seq_ids: list[int], logits: list[bool]) -> None:
        """Run one forward pass over a batch mixing many sequences, under the adapter last set with
        `set_adapter`. Raises on failure."""

    def prefill_cost(self) -> float:
        """Seconds per prompt token of a typical prefill, measured now (scheduler thread, empty cache):
        the scheduler's first estimate before it measures real steps."""

    # LoRA adapters. An adapter applies to a whole decode call: sequences on different adapters are
    # decoded in separate calls, each preceded by set_adapter.
    def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter file under `name`. Raises EngineError if the file cannot be loaded."""

    def unload_adapter(self, name: str) -> None:
        """Free an adapter (scheduler thread; no sequence may still use it). Unknown names are ignored."""

    def has_adapter(self, name: str) -> bool: ...
    def set_adapter(self, name: str | None) -> None:
        """Apply adapter `name` (None: the base model) to the following decode calls; cheap when unchanged."""

    def logits(self, batch_index: int) -> np.ndarray: ...
    def new_sampler(self, params: SamplingParams, seed: int) -> Sampler: ...
    def kv_remove(self, seq_id: int, from_pos: int) -> None: ...
    def kv_copy(self, src: int, dst: int, n_tokens: int) -> None: ...
    def kv_cells_used(self) -> int: ...
    def kv_capacity(self) -> int: ...

    def embed(self, tokens: list[int], adapter: str | None = None) -> list[float]:
        """Pooled (the model's own pooling, else the mean), L2-normalised embedding (separate context; safe off
        the scheduler thread)."""

    def score(self, tokens: list[int], start: int, adapter: str | None = None) -> list[float]:
        """Log-probabilities of tokens[start:] given what precedes each (separate context)."""

    def score_many(self, items: list[ScoreItem], adapter: str | None = None,
                   shared: list[int] | None = None) -> list[list[list[float]]]:
        """For each item and each of its continuations: the log-probabilities of the continuation's tokens
        given the item's prefix (separate context; batched: evals score thousands of rows). `shared`: a
        prefix many items start with, prefilled once per decode."""

    def close(self) -> None: ...


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def token_logprobs(runner: ModelRunner, idx: int, token: int, top_n: int) -> list[TokenLogprob]:
    """The sampled `token`'s log-probability at batch row `idx`, with the `top_n` most likely alternatives."""
    lps = log_softmax(runner.logits(idx))
    top: list[tuple[str, bytes, float]] = []
    if top_n:
        best = lps.argpartition(-top_n)[-top_n:]
        for t in best[lps[best].argsort()[::-1]]:
            b = runner.token_bytes(int(t))
            top.append((b.decode("utf-8", "replace"), b, float(lps[t])))
    b = runner.token_bytes(token)
    return [TokenLogprob(b.decode("utf-8", "replace"), b, float(lps[token]), top)]
