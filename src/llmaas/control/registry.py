"""Which model a request names: a served base model, or a tenant's fine-tuned model (an adapter on a
base model). Lookups of tenant models are cached; misses only briefly, so a fine-tune that just
succeeded in a worker is servable within a second."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from llmaas.control.db.database import Database
from llmaas.control.db.models import TenantModel

_NEGATIVE_TTL_S = 0.5


@dataclass(frozen=True)
class Resolved:
    base_model: str
    adapter: str | None = None  # the adapter's name in the engine (the ft model id)
    adapter_path: Path | None = None


class ModelRegistry:
    def __init__(self, db: Database, artifact_dir: Path) -> None:
        self.db, self.artifact_dir = db, artifact_dir
        self._hits: dict[tuple[str, str], Resolved] = {}
        self._misses: dict[tuple[str, str], float] = {}

    def cached(self, tenant_id: str, model: str) -> bool:
        """Whether `resolve_tenant_model` would answer without the database (no blocking)."""
        key = (tenant_id, model)
        return key in self._hits or self._misses.get(key, 0) > time.monotonic()

    def resolve_tenant_model(self, tenant_id: str, model: str) -> Resolved | None:
        key = (tenant_id, model)
        hit = self._hits.get(key)
        if hit is not None:
            return hit
        if self._misses.get(key, 0) > time.monotonic():
            return None
        with self.db.session() as s:
            m = s.get(TenantModel, model)
        if m is None or m.tenant_id != tenant_id:
            self._misses[key] = time.monotonic() + _NEGATIVE_TTL_S
            return None
        r = self._hits[key] = Resolved(m.base_model, m.id, self.artifact_dir / m.adapter_path)
        return r
