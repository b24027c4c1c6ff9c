"""Stored chat completions (`store: true`), feedback on them, their retention, and their export to a
fine-tuning file. Every query is scoped to the caller's tenant here, in the service: another tenant's
completion id is answered exactly like a missing one (404)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session

from llmaas.control.auth import audit
from llmaas.control.auth.principal import SPENDERS, Context, Principal
from llmaas.control.clock import from_unix, unix, utcnow
from llmaas.control.db.database import Database
from llmaas.control.db.models import CompletionFeedback, StoredCompletion, Tenant
from llmaas.control.paging import cursor_row, keyset_page, scan, split
from llmaas.core.chat_jsonl import content_text
from llmaas.core.errors import InvalidRequestError, NotFoundError


def completion_dict(c: StoredCompletion) -> dict:
    """The chat.completion object as it was returned, plus its (current) metadata."""
    return {**c.response, "metadata": c.metadata_ or {}}


def feedback_dict(f: CompletionFeedback) -> dict:
    return {"id": f.id, "object": "feedback", "completion_id": f.completion_id, "rating": f.rating,
            "correction": f.correction, "comment": f.comment, "created_at": unix(f.created_at)}


def _message_dict(completion_id: str, index: int, m: dict) -> dict:
    content = m.get("content")
    parts = content if isinstance(content, list) else None
    text = content_text(parts, strict=False) if parts is not None else content
    return {"id": f"{completion_id}-{index}", "role": m.get("role"), "content": text, "name": m.get("name"),
            "content_parts": parts}


def _meta_match(want: dict[str, str] | None) -> Callable[[StoredCompletion], bool] | None:
    """The metadata filter (a JSON column, filtered here while paging: see paging.scan); None: no filter."""
    if not want:
        return None
    return lambda c: all((c.metadata_ or {}).get(k) == v for k, v in want.items())


_KEY = (StoredCompletion.created_at, StoredCompletion.id)


@dataclass(frozen=True)
class ExportFilter:
    model: str | None = None
    created_after: int | None = None  # unix seconds, inclusive
    created_before: int | None = None  # unix seconds, exclusive
    min_rating: int | None = None  # the latest rating must be at least this; None: every completion
    include_corrected: bool = True  # a completion with a correction is in whatever its rating
    metadata: dict[str, str] | None = None


class StoredCompletionService:
    def __init__(self, db: Database, default_retention_days: int) -> None:
        self.db, self.default_retention_days = db, default_retention_days

    # --- written by the chat endpoint ---

    def save(self, principal: Principal, completion: dict, request: dict, metadata: dict[str, str] | None) -> None:
        """Keep a completion as it was returned (its id is the completion's id)."""
        row = StoredCompletion(id=completion["id"], tenant_id=principal.tenant_id, key_id=principal.key_id,
                               model=completion["model"], created_at=utcnow(), request=request,
                               response=completion, metadata_=metadata or {})
        with self.db.session() as s:
            s.add(row)

    # --- completions ---

    @staticmethod
    def _get(s: Session, ctx: Context, completion_id: str) -> StoredCompletion:
        c = s.get(StoredCompletion, completion_id)
        if c is None or c.tenant_id != ctx.principal.tenant_id:
            raise NotFoundError(f"No stored chat completion with id '{completion_id}'.", param="completion_id")
        return c

    def get(self, ctx: Context, completion_id: str) -> dict:
        with self.db.session() as s:
            return completion_dict(self._get(s, ctx, completion_id))

    def list(self, ctx: Context, *, model: str | None = None, metadata: dict[str, str] | None = None,
             after: str | None = None, limit: int = 20, order: str = "asc") -> tuple[list[dict], bool]:
        tid = ctx.principal.tenant_id
        stmt = select(StoredCompletion).where(StoredCompletion.tenant_id == tid)
        if model:
            stmt = stmt.where(StoredCompletion.model == model)
        with self.db.session() as s:
            cursor = cursor_row(s, StoredCompletion, after, _KEY, visible=lambda c: c.tenant_id == tid,
                                error=f"'after' is not a stored completion of yours: {after}")
            rows, more = keyset_page(s, stmt, _KEY, after=cursor, limit=limit, order=order,
                                     keep=_meta_match(metadata))
            return [completion_dict(c) for c in rows], more

    def review(self, ctx: Context, *, model: str | None = None, rated: str | None = None,
               limit: int = 50) -> list[dict]:
        """The newest stored completions for a person to review: each with its last user message, its answer and
        its latest feedback. `rated`: "good", "bad" or "unrated" (among the newest 10x `limit`)."""
        tid = ctx.principal.tenant_id
        stmt = select(StoredCompletion).where(StoredCompletion.tenant_id == tid)
        if model:
            stmt = stmt.where(StoredCompletion.model == model)
        stmt = stmt.order_by(StoredCompletion.created_at.desc(), StoredCompletion.id.desc()).limit(
            limit if rated is None else 10 * limit)
        with self.db.session() as s:
            rows = list(s.scalars(stmt))
            latest: dict[str, CompletionFeedback] = {}
            for f in s.scalars(select(CompletionFeedback).where(CompletionFeedback.completion_id.in_(
                    [c.id for c in rows])).order_by(CompletionFeedback.created_at)):
                latest[f.completion_id] = f
        out = []
        for c in rows:
            f = latest.get(c.id)
            if rated and {"good": f is not None and f.rating == 1, "bad": f is not None and f.rating == -1,
                          "unrated": f is None}.get(rated) is not True:
                continue
            users = [m for m in c.request.get("messages", []) if m.get("role") == "user"]
            last = users[-1].get("content") if users else None
            prompt = content_text(last, strict=False) if isinstance(last, list) else last
            choices = c.response.get("choices") or [{}]
            out.append({"id": c.id, "model": c.model, "created_at": unix(c.created_at), "prompt": prompt or "",
                        "answer": (choices[0].get("message") or {}).get("content") or "",
                        "feedback": feedback_dict(f) if f is not None else None})
            if len(out) == limit:
                break
        return out

    def update_metadata(self, ctx: Context, completion_id: str, metadata: dict[str, str] | None) -> dict:
        ctx.principal.require(*SPENDERS)
        with self.db.session() as s:
            c = self._get(s, ctx, completion_id)
            c.metadata_ = metadata or {}
            return completion_dict(c)

    def delete(self, ctx: Context, completion_id: str) -> None:
        """Delete a completion and the feedback on it."""
        ctx.principal.require(*SPENDERS)
        with self.db.session() as s:
            c = self._get(s, ctx, completion_id)
            s.execute(delete(CompletionFeedback).where(CompletionFeedback.tenant_id == c.tenant_id,
                                                       CompletionFeedback.completion_id == c.id))
            s.delete(c)
            audit.record(s, ctx, "chat.completion.delete", "chat.completion", c.id, tenant_id=c.tenant_id,
                         before={"id": c.id, "model": c.model, "metadata": c.metadata_})

    def messages(self, ctx: Context, completion_id: str, *, after: str | None = None, limit: int = 20,
                 order: str = "asc") -> tuple[list[dict], bool]:
        """The request's messages, each with an id `<completion id>-<index>`."""
        with self.db.session() as s:
            c = self._get(s, ctx, completion_id)
        items = [_message_dict(c.id, i, m) for i, m in enumerate(c.request.get("messages", []))]
        if order == "desc":
            items.reverse()
        if after:
            pos = next((i for i, m in enumerate(items) if m["id"] == after), None)
            if pos is None:
                raise InvalidRequestError(f"'after' is not a message id of this completion: {after}", param="after")
            items = items[pos + 1:]
        return split(items, limit)

    # --- feedback ---

    def add_feedback(self, ctx: Context, completion_id: str, rating: int, correction: str | None,
                     comment: str | None) -> dict:
        ctx.principal.require(*SPENDERS)
        if rating not in (1, -1) or isinstance(rating, bool):
            raise InvalidRequestError("'rating' must be 1 (good) or -1 (bad).", param="rating")
        with self.db.session() as s:
            c = self._get(s, ctx, completion_id)
            f = CompletionFeedback(id="fb-" + secrets.token_hex(12), tenant_id=c.tenant_id, completion_id=c.id,
                                   key_id=ctx.principal.key_id, rating=rating, correction=correction,
                                   comment=comment, created_at=utcnow())
            s.add(f)
            return feedback_dict(f)

    def list_feedback(self, ctx: Context, *, completion_id: str | None = None, after: str | None = None,
                      limit: int = 20, order: str = "desc") -> tuple[list[dict], bool]:
        fb, tid = CompletionFeedback, ctx.principal.tenant_id
        stmt = select(fb).where(fb.tenant_id == tid)
        with self.db.session() as s:
            if completion_id:
                self._get(s, ctx, completion_id)
                stmt = stmt.where(fb.completion_id == completion_id)
            key = (fb.created_at, fb.id)
            cursor = cursor_row(s, fb, after, key, visible=lambda f: f.tenant_id == tid,
                                error=f"'after' is not a feedback id of yours: {after}")
            rows, more = keyset_page(s, stmt, key, after=cursor, limit=limit, order=order)
            return [feedback_dict(f) for f in rows], more

    # --- retention ---

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete the completions older than their tenant's retention (and their feedback); the count deleted."""
        now = now or utcnow()
        deleted = 0
        with self.db.session() as s:
            tenant_ids = list(s.scalars(select(StoredCompletion.tenant_id).distinct()))
            days = {tid: d for tid, d in s.execute(select(Tenant.id, Tenant.store_retention_days)
                                                   .where(Tenant.id.in_(tenant_ids)))}
        for tid in tenant_ids:
            cutoff = now - timedelta(days=days.get(tid) or self.default_retention_days)
            expired = select(StoredCompletion.id).where(StoredCompletion.tenant_id == tid,
                                                        StoredCompletion.created_at < cutoff)
            with self.db.session() as s:  # one transaction per tenant: short write locks on SQLite
                s.execute(delete(CompletionFeedback).where(CompletionFeedback.tenant_id == tid,
                                                           CompletionFeedback.completion_id.in_(expired)))
                deleted += s.execute(delete(StoredCompletion).where(StoredCompletion.tenant_id == tid,
                                                                    StoredCompletion.created_at < cutoff)).rowcount
        return deleted

    # --- export ---

    def export_lines(self, ctx: Context, f: ExportFilter) -> Iterator[bytes]:
        """One JSONL line per matching completion: the request's messages, then the answer — the latest
        correction if any, else choice 0's content. The latest rating is the one `min_rating` checks."""
        ctx.principal.require(*SPENDERS)
        sc = StoredCompletion
        stmt = select(sc).where(sc.tenant_id == ctx.principal.tenant_id)
        if f.model:
            stmt = stmt.where(sc.model == f.model)
        if f.created_after is not None:
            stmt = stmt.where(sc.created_at >= from_unix(f.created_after))
        if f.created_before is not None:
            stmt = stmt.where(sc.created_at < from_unix(f.created_before))
        return self._export(stmt, f)

    def _export(self, stmt: Select, f: ExportFilter) -> Iterator[bytes]:
        fb = CompletionFeedback
        with self.db.session() as s:
            for c in scan(s, stmt, _KEY, keep=_meta_match(f.metadata)):
                # Feedback on one completion is a handful of rows: read newest first, per completion.
                rows = list(s.execute(select(fb.rating, fb.correction).where(
                    fb.tenant_id == c.tenant_id, fb.completion_id == c.id).order_by(fb.created_at.desc(),
                                                                                  fb.id.desc())))
                rating = rows[0].rating if rows else None
                correction = next((r.correction for r in rows if r.correction), None)
                rated_ok = f.min_rating is None or (rating is not None and rating >= f.min_rating)
                if not (rated_ok or (f.include_corrected and correction)):
                    continue
                calls = None if correction else _first_calls(c.response)
                answer = correction or _first_answer(c.response)
                if not answer.strip() and not calls:
                    continue  # nothing to learn from
                msgs = [_example_message(m) for m in c.request.get("messages", [])]
                reply: dict = {"role": "assistant", "content": answer or None}
                if calls:
                    reply["tool_calls"] = calls
                line: dict = {"messages": [*msgs, reply]}
                if c.request.get("tools"):  # OpenAI's fine-tuning format: the tools the calls were made with
                    line["tools"] = c.request["tools"]
                yield json.dumps(line, ensure_ascii=False).encode() + b"\n"


def _first_answer(response: dict) -> str:
    choices = response.get("choices") or []
    return ((choices[0].get("message") or {}).get("content") or "") if choices else ""


def _first_calls(response: dict) -> list[dict] | None:
    choices = response.get("choices") or []
    return ((choices[0].get("message") or {}).get("tool_calls") or None) if choices else None


def _example_message(m: dict) -> dict:
    out = {"role": m.get("role"), "content": m.get("content") if m.get("content") is not None else ""}
    for key in ("name", "tool_calls", "tool_call_id"):  # a tool-using conversation exports whole
        if m.get(key):
            out[key] = m[key]
    return out
