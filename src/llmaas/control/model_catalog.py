"""The run-time model catalog: the base models an admin registered (a bundled package or a local GGUF), what
each can do, which tenants see it and whether it loads at start. Stored in the database, so it survives a
restart and every gateway process shares it; read on the request path from an in-memory snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from llmaas.control.auth import audit
from llmaas.control.auth.principal import Context
from llmaas.control.clock import unix, utcnow
from llmaas.control.db.database import Database
from llmaas.control.db.models import CatalogModel, Tenant
from llmaas.core.errors import ConflictError, InvalidRequestError, NotFoundError


@dataclass(frozen=True)
class Entry:
    """A catalog row as the request path reads it."""

    id: str
    source_type: str  # package | gguf_path
    source: str
    description: str
    context_length: int | None
    max_seqs: int | None
    capabilities: tuple[str, ...]
    tenants: frozenset[str] | None
    load_at_start: bool
    created: int
    deployment: dict[str, Any] = field(default_factory=dict)  # changed deployment settings (see serving)

    @classmethod
    def of(cls, m: CatalogModel) -> Entry:
        return cls(m.id, m.source_type, m.source, m.description or "", m.context_length, m.max_seqs,
                   tuple(m.capabilities or ()), frozenset(m.tenants) if m.tenants is not None else None,
                   bool(m.load_at_start), unix(m.created_at), dict(m.deployment or {}))

    def visible_to(self, tenant_id: str, is_admin: bool = False) -> bool:
        return is_admin or self.tenants is None or tenant_id in self.tenants

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": self.created, "description": self.description,
                self.source_type: self.source, "context_length": self.context_length, "max_seqs": self.max_seqs,
                "capabilities": list(self.capabilities),
                "tenants": sorted(self.tenants) if self.tenants is not None else None,
                "load_at_start": self.load_at_start}


class ModelCatalog:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[str, Entry] = {}

    def reload(self) -> None:
        """Re-read the catalog (changes made by other processes show up within the meter's interval)."""
        with self.db.session() as s:
            self._cache = {m.id: Entry.of(m) for m in s.scalars(select(CatalogModel))}

    def entry(self, model_id: str) -> Entry | None:
        return self._cache.get(model_id)

    def entries(self) -> list[Entry]:
        return sorted(self._cache.values(), key=lambda e: e.id)

    def get(self, s: Session, model_id: str) -> CatalogModel:
        m = s.get(CatalogModel, model_id)
        if m is None:
            raise NotFoundError(f"No model '{model_id}' in the catalog. List it with GET /v1/admin/models.",
                                param="model")
        return m

    def register(self, s: Session, ctx: Context | None, *, id: str, source_type: str, source: str,
                 description: str, capabilities: list[str], context_length: int | None = None,
                 max_seqs: int | None = None, tenants: list[str] | None = None,
                 load_at_start: bool = False) -> Entry:
        """Add a model (admin only; `ctx` None is the server registering its own --model flags)."""
        if ctx is not None:
            ctx.principal.require()
        if s.get(CatalogModel, id) is not None:
            raise ConflictError(f"A model '{id}' is already in the catalog; change it with PATCH "
                                f"/v1/admin/models/{id} or delete it first.", param="id")
        _check_tenants(s, tenants)
        now = utcnow()
        m = CatalogModel(id=id, source_type=source_type, source=source, description=description,
                         context_length=context_length, max_seqs=max_seqs, capabilities=list(capabilities),
                         tenants=list(tenants) if tenants is not None else None, load_at_start=load_at_start,
                         created_at=now, updated_at=now)
        s.add(m)
        s.flush()
        e = self._cache[id] = Entry.of(m)
        if ctx is not None:
            audit.record(s, ctx, "model.register", "model", id, tenant_id=None, after=e.to_dict())
        return e

    def update(self, s: Session, ctx: Context | None, model_id: str, **changes: Any) -> Entry:
        """Change fields of an entry (admin only); `changes` holds only the fields being set."""
        if ctx is not None:
            ctx.principal.require()
        m = self.get(s, model_id)
        prev = Entry.of(m)
        before = {**prev.to_dict(), **({"deployment": prev.deployment} if "deployment" in changes else {})}
        for name in ("capabilities", "load_at_start"):
            if name in changes and changes[name] is None:
                raise InvalidRequestError(f"'{name}' cannot be null", param=name)
        if "tenants" in changes:
            _check_tenants(s, changes["tenants"])
        for k, v in changes.items():
            setattr(m, k, list(v) if isinstance(v, (list, tuple)) else v)
        m.updated_at = utcnow()
        s.flush()
        e = self._cache[model_id] = Entry.of(m)
        after = {**e.to_dict(), **({"deployment": e.deployment} if "deployment" in changes else {})}
        if ctx is not None and after != before:
            audit.record(s, ctx, "model.update", "model", model_id, tenant_id=None, before=before, after=after)
        return e

    def delete(self, s: Session, ctx: Context, model_id: str) -> Entry:
        ctx.principal.require()
        m = self.get(s, model_id)
        e = Entry.of(m)
        s.delete(m)
        s.flush()
        self._cache.pop(model_id, None)
        audit.record(s, ctx, "model.delete", "model", model_id, tenant_id=None, before=e.to_dict())
        return e


def _check_tenants(s: Session, tenants: list[str] | None) -> None:
    """A typo in a tenant id would hide the model from the tenant meant to have it: refuse unknown ids."""
    for t in tenants or ():
        if s.get(Tenant, t) is None:
            raise InvalidRequestError(f"No tenant '{t}'; tenants are named by their id (org-...).", param="tenants")
