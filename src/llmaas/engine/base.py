"""The Engine protocol: all the API layer knows of the data plane."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from llmaas.engine.chat_template import ChatMessage
from llmaas.engine.scoring import ScoreItem
from llmaas.engine.types import EngineStats, GenerationOutput, GenerationRequest, ModelInfo


class Engine(Protocol):
    info: ModelInfo

    async def start(self) -> None: ...
    async def shutdown(self) -> None: ...

    def tokenize(self, text: str, *, special: bool = False) -> list[int]: ...
    def tokenize_chat(self, messages: list[ChatMessage]) -> list[int]: ...
    def token_id(self, text_or_id: str) -> int | None:
        """Resolve a logit_bias key (a token id as a string) to a valid id, or None."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        """Stream deltas of one sequence. Raises OverloadedError when admission is full.
        Breaking out of the iteration (client gone) aborts the sequence."""

    async def abort(self, request_id: str) -> None: ...
    async def embed(self, inputs: list[list[int]], adapter: str | None = None) -> list[list[float]]: ...
    async def score(self, tokens: list[int], start: int, adapter: str | None = None) -> list[float]:
        """Log-likelihood of tokens[start:], token by token (under LoRA adapter `adapter` if given)."""

    async def score_many(self, items: list[ScoreItem], adapter: str | None = None,
                         shared: list[int] | None = None) -> list[list[list[float]]]:
        """Batched `score`: per item and continuation, log-probabilities of its tokens given the prefix
        (`shared`: a prefix many items start with, prefilled once per decode)."""

    # LoRA adapters on this base model, served concurrently with it. A request names one with
    # GenerationRequest.adapter; unknown names raise AdapterNotFoundError (404 model_not_found).
    def register_adapter(self, name: str, path: str) -> None:
        """Make adapter `name` (GGUF LoRA file) usable; loads nothing: the first request loads it."""

    async def ensure_adapter(self, name: str, path: str | None = None) -> None:
        """Register (if `path`) and load now; cheap when already loaded."""

    async def load_adapter(self, name: str, path: str) -> None: ...
    async def unload_adapter(self, name: str) -> None:
        """Unregister; freed at once if idle, else when its last sequence ends."""

    def adapters(self) -> list[str]:
        """Adapters loaded now, least recently used first."""

    def stats(self) -> EngineStats: ...
    def healthy(self) -> bool: ...
