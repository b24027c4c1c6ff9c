"""POST /v1/embeddings: mean-pooled, L2-normalised hidden states of the served model."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Request, Response

from llmaas.api.deps import CurrentPrincipal, open_ticket
from llmaas.api.generation import Metered, get_engine
from llmaas.core.errors import InvalidRequestError
from llmaas.protocol.openai import EmbeddingRequest

router = APIRouter()


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingRequest, request: Request, response: Response,
                            principal: CurrentPrincipal) -> dict:
    engine = get_engine(request, body.model, principal)
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
    ticket = await open_ticket(request, principal, body.model, "embeddings")
    try:
        texts = [x for x in items if isinstance(x, str)]
        encoded = iter(await engine.tokenize_many(texts))
        tokens: list[list[int]] = []
        for x in items:
            if isinstance(x, str):
                tokens.append(next(encoded))
            elif any(engine.token_id(str(t)) is None for t in x):
                raise InvalidRequestError("input contains a token id outside the vocabulary", param="input")
            else:
                tokens.append(list(x))
        n = sum(len(t) for t in tokens)
        await ticket.reserve(n, 0)
    except BaseException:
        await ticket.abandon()
        raise
    response.headers.update(ticket.headers)
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
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": n, "total_tokens": n}}
