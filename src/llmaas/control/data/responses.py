"""Stored responses of the Responses API: kept in the database (so that any replica, and a restarted server,
can answer GET /v1/responses/{id} and continue a conversation by `previous_response_id`), scoped to the
caller's tenant here, in the service (another tenant's id is answered exactly like a missing one), and
purged under the same retention as stored chat completions (the tenant's `store_retention_days`, else
the platform default)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from llmaas.control.auth import audit
from llmaas.control.auth.principal import SPENDERS, Context, Principal
from llmaas.control.clock import from_unix, unix, utcnow
from llmaas.control.db.database import Database
from llmaas.control.db.models import StoredResponse, Tenant
from llmaas.control.paging import split
from llmaas.core.errors import InvalidRequestError, NotFoundError


def response_object(*, response_id: str, created_at: int, model: str, status: str, request: dict,
                    output: list[dict], usage: dict | None, previous_response_id: str | None,
                    metadata: dict[str, str] | None, error: dict | None = None) -> dict:
    """A Response object as OpenAI shapes it. `request` holds the parameters it echoes (instructions, tools,
    tool_choice, parallel_tool_calls, text, temperature, top_p, max_output_tokens, truncation, store)."""
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": status, "model": model,
        "output": output, "usage": usage, "error": error,
        # The only way this server leaves a response unfinished: out of output tokens (or of context).
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "previous_response_id": previous_response_id, "metadata": metadata or {},
        **request,
    }


def _object(r: StoredResponse) -> dict:
    return response_object(response_id=r.id, created_at=unix(r.created_at), model=r.model, status=r.status,
                           request=r.request, output=r.output, usage=r.usage,
                           previous_response_id=r.previous_response_id, metadata=r.metadata_, error=r.error)


class ResponseStore:
    def __init__(self, db: Database, default_retention_days: int) -> None:
        self.db, self.default_retention_days = db, default_retention_days

    # --- written and read by the serving of POST /v1/responses ---

    def save(self, principal: Principal, response: dict, request: dict, input_items: list[dict]) -> None:
        """Keep a finished (or failed) response (`response_object`'s dict) with the input items it answered."""
        row = StoredResponse(id=response["id"], tenant_id=principal.tenant_id, key_id=principal.key_id,
                             model=response["model"], status=response["status"],
                             created_at=from_unix(response["created_at"]), request=request,
                             input_items=input_items, output=response["output"], usage=response["usage"],
                             previous_response_id=response["previous_response_id"], metadata_=response["metadata"],
                             error=response.get("error"))
        with self.db.session() as s:
            s.add(row)

    def conversation(self, principal: Principal, response_id: str) -> list[dict]:
        """The items a response continuing `response_id` starts from: its input items, then its output. A
        response this tenant has not stored (or another tenant's) is a 400 naming `previous_response_id`."""
        with self.db.session() as s:
            r = s.get(StoredResponse, response_id)
            if r is None or r.tenant_id != principal.tenant_id:
                raise InvalidRequestError(f"Previous response with id '{response_id}' not found (only a stored "
                                          "response of your own can be continued).", param="previous_response_id")
            return [*r.input_items, *r.output]

    # --- the routes ---

    @staticmethod
    def _get(s: Session, ctx: Context, response_id: str) -> StoredResponse:
        r = s.get(StoredResponse, response_id)
        if r is None or r.tenant_id != ctx.principal.tenant_id:
            raise NotFoundError(f"No response with id '{response_id}'.", param="response_id")
        return r

    def get(self, ctx: Context, response_id: str) -> dict:
        with self.db.session() as s:
            return _object(self._get(s, ctx, response_id))

    def delete(self, ctx: Context, response_id: str) -> None:
        ctx.principal.require(*SPENDERS)
        with self.db.session() as s:
            r = self._get(s, ctx, response_id)
            s.delete(r)
            audit.record(s, ctx, "response.delete", "response", r.id, tenant_id=r.tenant_id,
                         before={"id": r.id, "model": r.model, "metadata": r.metadata_})

    def input_items(self, ctx: Context, response_id: str, *, after: str | None = None, limit: int = 20,
                    order: str = "desc") -> tuple[list[dict], bool]:
        """A page of the response's input items (earlier turns' included), newest first by default as on
        OpenAI; `after` is an item id of this response."""
        with self.db.session() as s:
            items = list(self._get(s, ctx, response_id).input_items)
        if order == "desc":
            items.reverse()
        if after:
            pos = next((i for i, m in enumerate(items) if m.get("id") == after), None)
            if pos is None:
                raise InvalidRequestError(f"'after' is not an input item id of this response: {after}", param="after")
            items = items[pos + 1:]
        return split(items, limit)

    # --- retention ---

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete the responses older than their tenant's retention; the count deleted."""
        now = now or utcnow()
        deleted = 0
        with self.db.session() as s:
            tenant_ids = list(s.scalars(select(StoredResponse.tenant_id).distinct()))
            days = {tid: d for tid, d in s.execute(select(Tenant.id, Tenant.store_retention_days)
                                                   .where(Tenant.id.in_(tenant_ids)))}
        for tid in tenant_ids:
            cutoff = now - timedelta(days=days.get(tid) or self.default_retention_days)
            with self.db.session() as s:  # one transaction per tenant: short write locks on SQLite
                deleted += s.execute(delete(StoredResponse).where(StoredResponse.tenant_id == tid,
                                                                  StoredResponse.created_at < cutoff)).rowcount
        return deleted
