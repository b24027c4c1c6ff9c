"""EngineClient: all that the layers above the engine (serving, api, control, evals, workers) know of one.

A structural type, so that what serves a model (the in-process BatchingEngine, or an engine in another
process) can change without touching the code that calls it. Nothing above the
engine may reach past this interface (e.g. into BatchingEngine.runner): what it needs goes here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from llmaas.engine.chat_template import ChatMessage
from llmaas.engine.scoring import ScoreItem
from llmaas.engine.types import EngineStats, GenerationOutput, GenerationRequest, ModelInfo, Places


class EngineClient(Protocol):
    info: ModelInfo  # model id, context size, vocabulary size, sequence slots

    async def start(self) -> None: ...
    async def shutdown(self) -> None: ...

    # -- tokens ------------------------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = False) -> list[int]: ...
    def tokenize_chat(self, messages: list[ChatMessage]) -> list[int]: ...
    async def tokenize_chat_async(self, messages: list[ChatMessage]) -> list[int]:
        """tokenize_chat, off the event loop when the messages are large."""

    async def tokenize_many(self, texts: list[str], *, special: bool = False) -> list[list[int]]:
        """tokenize for each text, off the event loop when they are large."""

    def token_id(self, key: str) -> int | None:
        """Resolve a token id given as a string (a logit_bias key, a prompt token) to a valid id, or None."""

    def eog_tokens(self) -> list[int]:
        """The tokens that end a generation (EOS, EOT, ...)."""

    async def ready(self) -> None:
        """Wait until the engine can take a request: an engine scaled to zero starts a replica first, so a
        client sees a cold start as time to first token; ModelNotReadyError (503, Retry-After) past a bound."""

    # -- generation ----------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest,
                 places: Places | None = None) -> AsyncGenerator[GenerationOutput, None]:
        """Stream deltas of one sequence. Raises OverloadedError when admission is full, unless it takes one
        of `places` (reserved earlier). Breaking out of the iteration (client gone) aborts the sequence."""

    async def abort(self, request_id: str) -> None: ...
    def check_capacity(self, n: int = 1) -> None:
        """Raise OverloadedError (503) unless `n` more sequences fit now."""

    def reserve(self, n: int = 1) -> Places:
        """check_capacity, and hold the n places until the caller's sequences take them: a stream is refused
        before its 200 status line goes out, never after it (concurrent requests cannot both pass a check)."""

    # -- side computations ---------------------------------------------------------------------------
    async def embed(self, inputs: list[list[int]], adapter: str | None = None) -> list[list[float]]: ...
    async def score(self, tokens: list[int], start: int, adapter: str | None = None) -> list[float]:
        """Log-likelihood of tokens[start:], token by token (under LoRA adapter `adapter` if given)."""

    async def score_many(self, items: list[ScoreItem], adapter: str | None = None,
                         shared: list[int] | None = None) -> list[list[list[float]]]:
        """Batched `score`: per item and continuation, log-probabilities of its tokens given the prefix
        (`shared`: a prefix many items start with, prefilled once per decode)."""

    # -- LoRA adapters on this base model, served concurrently with it. A request names one with
    # GenerationRequest.adapter; unknown names raise AdapterNotFoundError (404 model_not_found).
    def register_adapter(self, name: str, path: str) -> None:
        """Make adapter `name` (GGUF LoRA file) usable; loads nothing: the first request loads it."""

    def has_adapter(self, name: str) -> bool:
        """Whether `name` is registered (loaded or not)."""

    async def ensure_adapter(self, name: str, path: str | None = None) -> None:
        """Register (if `path`) and load now; cheap when already loaded."""

    async def load_adapter(self, name: str, path: str) -> None: ...
    async def unload_adapter(self, name: str) -> None:
        """Unregister; freed at once if idle, else when its last sequence ends."""

    def adapters(self) -> list[str]:
        """Adapters loaded now, least recently used first."""

    # -- health --------------------------------------------------------------------------------------
    def stats(self) -> EngineStats: ...
    def healthy(self) -> bool:
        """Started and running: what readiness needs."""

    def stopped(self) -> bool:
        """Started once and no longer running (not restarted): what liveness reports."""
