"""Plain data crossing the engine boundary. The engine works on token ids; text is decoded here too
so that stop strings and streaming deltas are handled in one place."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from llmaas.core.errors import ModelCapabilityError

GENERATIVE = ("chat", "completions", "embeddings")  # a causal LM: generates, and its hidden states embed
EMBEDDINGS_ONLY = ("embeddings",)  # an encoder (BERT): no LM head to generate with


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # None: off; k >= 0: sampled token's logprob + k alternatives
    grammar: str | None = None  # GBNF, root rule "root"
    ignore_eos: bool = False


@dataclass(slots=True)
class GenerationRequest:
    request_id: str
    prompt_tokens: list[int]
    params: SamplingParams
    adapter: str | None = None  # name of a LoRA adapter registered with the engine; None: the base model
    # Admission order among waiting requests: lower first. 0 = interactive; batch lines (serving/batches.py) use 1,
    # so they only fill slots interactive requests leave idle.
    priority: int = 0


@dataclass(slots=True)
class TokenLogprob:
    token: str
    token_bytes: bytes
    logprob: float
    top: list[tuple[str, bytes, float]]


@dataclass(slots=True)
class GenerationOutput:
    """One streamed delta of a sequence. The last one has finish_reason set."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    error: str | None = None
    # With finish_reason "error": the request's own fault (e.g. a grammar that does not build), which the
    # client gets as such (a 400); None for an engine fault.
    exc: Exception | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class EngineStats:
    running: int
    waiting: int
    kv_cache_usage: float
    adapters_loaded: int = 0


@dataclass(slots=True)
class ModelInfo:
    model_id: str
    context_size: int
    n_vocab: int
    n_slots: int = 1  # sequences decoded together
    owned_by: str = "llmaas"
    created: int = 0
    meta: dict[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = GENERATIVE  # what the model can serve, read from the model itself

    def require(self, capability: str, model: str | None = None) -> None:
        """400 (param "model") unless the model can serve `capability`; `model`: the name the client used."""
        if capability not in self.capabilities:
            raise ModelCapabilityError(model or self.model_id, capability, self.capabilities)


class Places:
    """Sequence places promised to one request by `EngineClient.reserve`, so that a stream whose 200 status line
    has gone out is never refused for capacity afterwards. Each `generate` given these places takes one; what is
    left counts against capacity until `release` (the request ended) or, for a stream that never started (its
    client left before the first byte), until the places lapse."""

    LAPSE_S = 10.0

    __slots__ = ("left", "lapse_at")

    def __init__(self, n: int) -> None:
        self.left = n
        self.lapse_at = time.monotonic() + self.LAPSE_S

    def take(self) -> bool:
        """One place for a sequence starting now; False when none is left (the caller checks capacity)."""
        if self.left <= 0 or time.monotonic() > self.lapse_at:
            return False
        self.left -= 1
        return True

    def held(self, now: float) -> int:
        return self.left if now <= self.lapse_at else 0

    def release(self) -> None:
        self.left = 0
