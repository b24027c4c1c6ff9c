"""/v1/admin/models: the run-time model catalog (register, load, unload, change, delete) and its prices.

Loading happens in the background: the answer to a load carries `status: "loading"`, and the object's
`status` turns `ready` (or `failed`, with `error`) when the engine is up. Admins only."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from llmaas.api.deps import CurrentContext, control_plane
from llmaas.api.openapi import LISTING, READING, WRITING
from llmaas.api.schemas import (
    CATALOG_MODEL,
    CATALOG_MODEL_LIST,
    CATALOG_MODEL_OR_PRICE,
    MODEL_DELETED,
    MODEL_PRICE,
    merge,
    ok,
)
from llmaas.control.auth.principal import Context
from llmaas.control.billing.catalog import price_dict
from llmaas.control.model_catalog import Entry
from llmaas.control.paging import page
from llmaas.control.plane import ControlPlane
from llmaas.core.errors import InvalidRequestError
from llmaas.core.model_files import bundled, model_id_for
from llmaas.protocol.admin import ModelRegister, ModelUpdate, PriceSet
from llmaas.serving.catalog import ModelLoader, default_capabilities, source_path
from llmaas.serving.models import ServedModels

router = APIRouter(prefix="/v1/admin", tags=["admin"])
_PRICES = ("input_usd_per_mtok", "output_usd_per_mtok", "training_usd_per_mtok", "batch_discount")


def _cp(request: Request) -> ControlPlane:
    return control_plane(request, "The admin API")


def _loader(request: Request) -> ModelLoader:
    served: ServedModels = request.app.state.served
    assert served.loader is not None  # the lifespan always builds one when the control plane is on
    return served.loader


def _model_out(request: Request, cp: ControlPlane, s, e: Entry) -> dict:
    loader = _loader(request)
    out = {**e.to_dict(), **loader.state(e.id).to_dict()}
    engine = loader.engines.get(e.id)
    if engine is not None:
        out["loaded"] = {"context_length": engine.info.context_size, "max_seqs": engine.info.n_slots}
    p = cp.catalog.find(s, e.id)
    price = price_dict(p) if p is not None else None
    out.update({k: price[k] if price else None for k in _PRICES})
    return out


def _set_prices(cp: ControlPlane, s, ctx, model: str, body: ModelRegister | ModelUpdate | PriceSet) -> None:
    sent = {k: str(v) for k, v in body.model_dump(include=set(_PRICES), exclude_none=True).items()}
    if sent or cp.catalog.find(s, model) is None:
        cp.catalog.set_price(s, ctx, model, **sent)


@router.get("/models", responses=merge(LISTING, ok(CATALOG_MODEL_LIST)))
def list_models(request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    ctx.principal.require()
    with cp.db.session() as s:
        return page([_model_out(request, cp, s, e) for e in cp.models.entries()], False)


@router.post("/models", responses=merge(WRITING, ok(CATALOG_MODEL)))
async def register_model(body: ModelRegister, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    ctx.principal.require()
    if (body.package is None) == (body.gguf_path is None):
        raise InvalidRequestError("give exactly one of 'package' (a bundled model) and 'gguf_path'",
                                  param="package" if body.package is None else "gguf_path")
    source_type, source = ("package", body.package) if body.package else ("gguf_path", body.gguf_path or "")
    path = await asyncio.to_thread(source_path, source_type, source)
    b = bundled(source) if source_type == "package" else None
    model_id = body.id or model_id_for(source)
    caps = body.capabilities or await asyncio.to_thread(default_capabilities, source_type, source, path)
    description = body.description if body.description is not None else (b.description if b else "")

    def store() -> Entry:
        with cp.db.session() as s:
            e = cp.models.register(s, ctx, id=model_id, source_type=source_type, source=source,
                                   description=description, capabilities=list(caps),
                                   context_length=body.context_length, max_seqs=body.max_seqs,
                                   tenants=body.tenants, load_at_start=body.load_at_start
                                   if body.load_at_start is not None else body.load)
            _set_prices(cp, s, ctx, model_id, body)
            return e

    e = await asyncio.to_thread(store)
    if body.load:
        try:
            await _loader(request).load(e)
        except Exception:  # a load refused up front (memory) leaves the entry, not marked to load
            await asyncio.to_thread(_mark, cp, None, e.id, False)
            raise
    return await asyncio.to_thread(_out, request, cp, e.id)


def _out(request: Request, cp: ControlPlane, model_id: str) -> dict:
    with cp.db.session() as s:
        return _model_out(request, cp, s, Entry.of(cp.models.get(s, model_id)))


@router.get("/models/{model:path}", responses=merge(READING, ok(CATALOG_MODEL_OR_PRICE)))
def get_model(model: str, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    ctx.principal.require()
    with cp.db.session() as s:
        if cp.models.entry(model) is None and (p := cp.catalog.find(s, model)) is not None:
            return price_dict(p)  # a price for a model that is not in the catalog
        return _model_out(request, cp, s, Entry.of(cp.models.get(s, model)))


@router.put("/models/{model:path}", responses=merge(WRITING, ok(MODEL_PRICE)))
def set_price(model: str, body: PriceSet, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    with cp.db.session() as s:
        p = cp.catalog.set_price(
            s, ctx, model, input_usd_per_mtok=body.input_usd_per_mtok, output_usd_per_mtok=body.output_usd_per_mtok,
            training_usd_per_mtok=body.training_usd_per_mtok, batch_discount=body.batch_discount)
        return price_dict(p)


@router.patch("/models/{model:path}", responses=merge(WRITING, ok(CATALOG_MODEL)))
def update_model(model: str, body: ModelUpdate, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    changes = body.model_dump(exclude_unset=True, exclude=set(_PRICES))
    if changes.get("description", "") is None:
        changes["description"] = ""
    with cp.db.session() as s:
        e = cp.models.update(s, ctx, model, **changes)
        _set_prices(cp, s, ctx, model, body)
        return _model_out(request, cp, s, e)


@router.post("/models/{model:path}/load", responses=merge(WRITING, ok(CATALOG_MODEL)))
async def load_model(model: str, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    ctx.principal.require()
    e = await asyncio.to_thread(_get_row, cp, model)
    await _loader(request).load(e)
    await asyncio.to_thread(_mark, cp, ctx, model, True)
    return await asyncio.to_thread(_out, request, cp, model)


@router.post("/models/{model:path}/unload", responses=merge(WRITING, ok(CATALOG_MODEL)))
async def unload_model(model: str, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    ctx.principal.require()
    await asyncio.to_thread(_get_row, cp, model)  # 404 for a model not in the catalog
    await asyncio.to_thread(_mark, cp, ctx, model, False)
    await _loader(request).unload(model)
    return await asyncio.to_thread(_out, request, cp, model)


@router.delete("/models/{model:path}", responses=merge(WRITING, ok(MODEL_DELETED)))
async def delete_model(model: str, request: Request, ctx: CurrentContext) -> dict:
    cp = _cp(request)
    ctx.principal.require()
    await asyncio.to_thread(_get_row, cp, model)
    await _loader(request).unload(model)

    def remove() -> None:
        with cp.db.session() as s:
            cp.models.delete(s, ctx, model)
            cp.catalog.remove(s, model)

    await asyncio.to_thread(remove)
    _loader(request).states.pop(model, None)
    return {"id": model, "object": "model.deleted", "deleted": True}


def _get_row(cp: ControlPlane, model: str) -> Entry:
    """The catalog entry (from the database, so a model another process registered is found), or 404."""
    with cp.db.session() as s:
        return Entry.of(cp.models.get(s, model))


def _mark(cp: ControlPlane, ctx: Context | None, model: str, load_at_start: bool) -> None:
    """Loaded or unloaded: the server comes back the same way after a restart."""
    with cp.db.session() as s:
        cp.models.update(s, ctx, model, load_at_start=load_at_start)
