"""The scheduler's book-keeping: a sequence in flight, a KV slot, the batch of one decode call."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmaas.engine.model_runner import Sampler
from llmaas.engine.text import TextAssembler
from llmaas.engine.types import GenerationRequest


@dataclass(eq=False)
class Seq:
    req: GenerationRequest
    arrived: float
    slot: int = -1
    sampler: Sampler | None = None
    text: TextAssembler | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet in the KV cache
    n_past: int = 0
    last_token: int = -1
    generated: int = 0
    cached: int = 0
    last_token_at: float = 0.0
    # A preempted sequence's tokens so far (prompt + generated): what it re-enters the KV cache with when it
    # gets a slot again. Its sampler and text state are kept, so it goes on exactly where it stopped.
    resume: list[int] | None = None

    @property
    def background(self) -> bool:
        """A batch line (priority > 0): it runs in the capacity interactive requests leave."""
        return self.req.priority > 0


@dataclass(eq=False)
class Slot:
    tokens: list[int] = field(default_factory=list)  # what this slot's KV cache holds, in order
    adapter: str | None = None  # the adapter those tokens were computed under
    seq: Seq | None = None
    used_at: int = 0  # admission counter when a request last took it (least recently used goes first)


@dataclass(eq=False)
class Batch:
    """One decode call of a step: the sequences of one adapter."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seq_ids: list[int] = field(default_factory=list)
    want: list[bool] = field(default_factory=list)
    fed: list[tuple[Seq, list[int]]] = field(default_factory=list)
    samplers: list[tuple[Seq, int]] = field(default_factory=list)

    def add(self, seq: Seq, toks: list[int], sample: bool) -> None:
        for j, t in enumerate(toks):
            self.tokens.append(t)
            self.positions.append(seq.n_past + j)
            self.seq_ids.append(seq.slot)
            self.want.append(sample and j == len(toks) - 1)
        self.fed.append((seq, toks))
        if sample:
            self.samplers.append((seq, len(self.tokens) - 1))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reusable(slot: Slot, prompt: list[int], adapter: str | None) -> int:
    """How many prompt tokens the slot's KV cache can supply. Only KV computed under the same adapter is
    valid, and at most len-1 tokens: the last prompt token must be decoded to get logits."""
    if slot.adapter != adapter:
        return 0
    return min(common_prefix(slot.tokens, prompt), len(prompt) - 1)


def victims(slots: list[Slot]) -> list[Seq]:
    """The background sequences holding slots, cheapest to recompute first (fewest tokens in KV)."""
    return sorted((s.seq for s in slots if s.seq is not None and s.seq.background), key=lambda q: q.n_past)


def history(seq: Seq, slot: Slot) -> list[int]:
    """Every token of `seq` so far: what its slot's KV holds, then what it has yet to feed (the rest of its
    prompt while prefilling, else the token it sampled last)."""
    return slot.tokens + (seq.pending if seq.pending else [seq.last_token])
