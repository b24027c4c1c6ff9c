"""Batched log-likelihood scoring for evals: many (prefix, continuations) items per forward pass.

A classification row asks "how likely is each label after this prompt?": one prefix, k short
continuations. The scoring context keeps each continuation in its own KV stream (llama.cpp's
non-unified cache): with a unified cache a sequence's logits depend on the other sequences in its batch
(measured here: up to ~1 in a logit), so an eval's numbers would depend on how its rows were packed.
A decode call holds many items. Phase 0 prefills a prefix they share (an eval's system prompt and
instructions, given by the caller for the whole eval) once and copies it to every item's stream;
phase 1 prefills the rest of each item's prefix on the stream of its first continuation, whose KV is
then copied to the streams of the other continuations (llama_memory_seq_cp); phase 2 decodes all
continuation tokens. So a prompt costs one prefill whatever the label count.
Backend-independent planning lives here; runners do the decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

SCORE_SEQS = 16  # KV streams in the scoring context: continuations scored per decode
SCORE_SEQ_TOKENS = 512  # KV cells per stream; a longer prefix + continuation is scored alone
SCORE_BATCH = 4096  # tokens per scoring decode call


@dataclass(frozen=True, slots=True)
class ScoreItem:
    prefix: list[int]  # at least one token (BOS)
    continuations: list[list[int]]

    @property
    def n_tokens(self) -> int:
        """Tokens the model reads for this item (the prefix once)."""
        return len(self.prefix) + sum(map(len, self.continuations))

    def fits(self) -> bool:
        conts = [c for c in self.continuations if c]
        return bool(self.prefix) and len(conts) <= SCORE_SEQS and \
            all(len(self.prefix) + len(c) <= SCORE_SEQ_TOKENS for c in conts)


def pack(items: list[ScoreItem], indices: list[int], max_streams: int, max_tokens: int) -> Iterator[list[int]]:
    """Greedy groups of item indices, in order, using at most `max_streams` streams and `max_tokens` tokens."""
    group: list[int] = []
    streams = tokens = 0
    for i in indices:
        it = items[i]
        k = sum(1 for c in it.continuations if c)
        if group and (streams + k > max_streams or tokens + it.n_tokens > max_tokens):
            yield group
            group, streams, tokens = [], 0, 0
        group.append(i)
        streams += k
        tokens += it.n_tokens
    if group:
        yield group


@dataclass
class Plan:
    """Where each logit row comes from. `first[k]` is the batch index (phase 1) whose logits predict the
    first token of every continuation of group item k; `rest[(k, j)]` the phase-2 batch indices that
    predict tokens 1.. of its continuation j; `copies` the (from stream, to stream) KV copies between."""

    first: list[int]
    rest: dict[tuple[int, int], list[int]]
    streams: dict[tuple[int, int], int]
    copies: list[tuple[int, int]]
    owners: list[int | None] = field(default_factory=list)  # the stream holding each item's prefix


def _put(batch, n: int, token: int, pos: int, stream: int, want: bool) -> int:
    batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.logits[n] = token, pos, 1, want
    batch.seq_id[n][0] = stream
    return n + 1


def common_prefix(prompts: list[list[int]]) -> list[int]:
    """The tokens every prompt starts with, leaving each at least one token of its own: what an eval's
    rows share (system prompt, instructions), computed once per eval so every row is split the same way."""
    if not prompts:
        return []
    first, n = prompts[0], min(map(len, prompts)) - 1
    for p in prompts[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return first[: max(n, 0)]


def starts_with(prefix: list[int], shared: list[int]) -> bool:
    """Whether an item can reuse `shared`: it starts with it and has at least one token after it."""
    return len(prefix) > len(shared) and prefix[: len(shared)] == shared


def fill_shared(batch, tokens: list[int]) -> None:
    """Phase 0: the prefix all items share, once, on stream 0 (then copied to every item's stream)."""
    n = 0
    for p, t in enumerate(tokens):
        n = _put(batch, n, t, p, 0, p == len(tokens) - 1)
    batch.n_tokens = n


def fill_prefixes(batch, group: list[ScoreItem], shared: int = 0) -> Plan:
    """Phase 1: each prefix (after the first `shared` tokens, already in the KV cache) on the stream of its
    first non-empty continuation; logits at its last token."""
    n, stream = 0, 0
    plan = Plan([], {}, {}, [])
    for k, it in enumerate(group):
        own = None
        for j, c in enumerate(it.continuations):
            if c:
                plan.streams[(k, j)] = stream
                if own is None:
                    own = stream
                else:
                    plan.copies.append((own, stream))
                stream += 1
        plan.owners.append(own)
        for p in range(shared, len(it.prefix)):
            n = _put(batch, n, it.prefix[p], p, own if own is not None else 0,
                     p == len(it.prefix) - 1 and own is not None)
        plan.first.append(n - 1)
    batch.n_tokens = n
    return plan


def fill_continuations(batch, group: list[ScoreItem], plan: Plan) -> int:
    """Phase 2: every continuation token but the last (nothing reads its logits), on its own stream."""
    n = 0
    for k, it in enumerate(group):
        for j, c in enumerate(it.continuations):
            if not c:
                continue
            idx = []
            for p, t in enumerate(c[:-1]):
                n = _put(batch, n, t, len(it.prefix) + p, plan.streams[(k, j)], True)
                idx.append(n - 1)
            plan.rest[(k, j)] = idx
    batch.n_tokens = n
    return n


def score_one_by_one(score: Callable[[list[int], int], list[float]], items: list[ScoreItem]) -> list[list[list[float]]]:
    """score_many for runners without batched scoring: one `score(tokens, start)` call per continuation."""
    return [[score(it.prefix + c, len(it.prefix)) if c else [] for c in it.continuations] for it in items]
