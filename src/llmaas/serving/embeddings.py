"""Embeddings (POST /v1/embeddings): the served model's pooled (its own pooling, else the mean), L2-normalised
hidden states."""

from __future__ import annotations

import base64

import numpy as np

from llmaas.control.auth.principal import Principal
from llmaas.core.errors import InvalidRequestError
from llmaas.engine.client import EngineClient
from llmaas.protocol.openai import EmbeddingRequest
from llmaas.serving.models import Served, ServedModels, in_vocab
from llmaas.serving.sequences import Metered


class ServingEmbedding:
    def __init__(self, models: ServedModels) -> None:
        self.models = models

    async def create(self, body: EmbeddingRequest, principal: Principal, request_id: str) -> Served:
        engine = self.models.get(body.model, principal, "embeddings")
        await engine.ready()
        raw = body.input
        if isinstance(raw, str):
            items: list = [raw]
        elif raw and all(isinstance(x, int) for x in raw):
            items = [raw]
        else:
            items = list(raw)
        if not items or any(len(x) == 0 for x in items):
            raise InvalidRequestError("input must not be empty", param="input")
        if len(items) > 2048:
            raise InvalidRequestError("at most 2048 inputs per request", param="input")
        # Role, model and request limits first: a refused caller costs no tokenizing.
        ticket = await self.models.open_ticket(principal, body.model, "embeddings", request_id)
        try:
            tokens = await _input_tokens(engine, items)
            n = sum(len(t) for t in tokens)
            await ticket.reserve(n, 0)
        except BaseException:
            await ticket.abandon()
            raise
        async with Metered(ticket, n):
            vectors = await engine.embed(tokens)
        data = []
        for i, v in enumerate(vectors):
            if body.dimensions:
                v = v[: body.dimensions]
            emb: list[float] | str = v
            if body.encoding_format == "base64":
                emb = base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return Served(ticket.headers, body={"object": "list", "data": data, "model": body.model,
                                            "usage": {"prompt_tokens": n, "total_tokens": n}})


async def _input_tokens(engine: EngineClient, items: list) -> list[list[int]]:
    """The inputs as token ids: texts tokenized, token id lists checked against the vocabulary."""
    encoded = iter(await engine.tokenize_many([x for x in items if isinstance(x, str)]))
    tokens: list[list[int]] = []
    for x in items:
        if isinstance(x, str):
            tokens.append(next(encoded))
        elif not in_vocab(engine, x):
            raise InvalidRequestError("input contains a token id outside the vocabulary", param="input")
        else:
            tokens.append(list(x))
    return tokens
