"""POST /v1/embeddings: mean-pooled, L2-normalised hidden states of the served model."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Request, Response

from llmaas.api.deps import CurrentPrincipal, admit
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
    tokens = [engine.tokenize(x) if isinstance(x, str) else list(x) for x in items]
    n = sum(len(t) for t in tokens)
    ticket = await admit(request, principal, body.model, "embeddings", n, 0)
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
