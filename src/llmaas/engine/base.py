"""The Engine protocol: all the API layer knows of the data plane."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from llmaas.engine.chat_template import ChatMessage
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
    async def embed(self, inputs: list[list[int]]) -> list[list[float]]: ...
    async def score(self, tokens: list[int], start: int) -> list[float]:
        """Log-likelihood of tokens[start:], token by token."""

    async def load_adapter(self, name: str, path: str) -> None: ...
    async def unload_adapter(self, name: str) -> None: ...
    def stats(self) -> EngineStats: ...
    def healthy(self) -> bool: ...
