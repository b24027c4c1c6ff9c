"""Batches (OpenAI's /v1/batches), the control-plane side: create and check, read, list, cancel; and for the
runner in the API process (serving/batches.py) the durable steps: claim with a lease, store the validated
lines, mark each line finished, finalize into output and error files.

Progress is per line in `batch_lines`: a line goes pending -> done | failed exactly once, by a conditional
UPDATE in the transaction that also writes its usage record (`finish_line`, run by Meter.write_with). A runner
that dies leaves its lease to lapse; the next claim resumes with the lines still pending, so a finished line
is never run or billed twice. A batch is claimed as jobs are (control/jobs/queue.py): a conditional UPDATE of
the lease, which exactly one process wins on SQLite and PostgreSQL alike."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, update
from sqlalchemy.orm import Session

from llmaas.control.auth.principal import SPENDERS, Context
from llmaas.control.clock import aware, unix, utcnow
from llmaas.control.data.files import FileService
from llmaas.control.db.database import Database
from llmaas.control.db.models import Batch, BatchLine, StoredFile
from llmaas.control.paging import cursor_row, keyset_page
from llmaas.core.errors import InvalidRequestError, NotFoundError

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
WINDOWS = {"24h": timedelta(hours=24)}
# Statuses a runner still has work in; the others are final.
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


@dataclass(frozen=True)
class LineRecord:
    """One line of an input file after validation: its request body, or the error that failed it."""

    line: int
    custom_id: str | None
    request: dict | None
    error: dict | None = None


class LineTaken(Exception):
    """A line was already finished (by a runner whose lease had lapsed but still ran it): roll back."""


def counts(s: Session, batch_id: str) -> dict[str, int]:
    rows = dict(s.execute(select(BatchLine.state, func.count()).where(BatchLine.batch_id == batch_id)
                          .group_by(BatchLine.state)).all())
    done, failed = rows.get("done", 0), rows.get("failed", 0)
    return {"total": done + failed + rows.get("pending", 0), "completed": done, "failed": failed}


def batch_dict(b: Batch, request_counts: dict[str, int]) -> dict:
    """The batch as openai-python's `Batch` type has it."""
    return {
        "id": b.id, "object": "batch", "endpoint": b.endpoint, "input_file_id": b.input_file_id,
        "completion_window": b.completion_window, "status": b.status,
        "errors": {"object": "list", "data": b.errors} if b.errors else None,
        "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
        "created_at": unix(b.created_at), "in_progress_at": unix(b.in_progress_at), "expires_at": unix(b.expires_at),
        "finalizing_at": unix(b.finalizing_at), "completed_at": unix(b.completed_at), "failed_at": unix(b.failed_at),
        "expired_at": unix(b.expired_at), "cancelling_at": unix(b.cancelling_at), "cancelled_at": unix(b.cancelled_at),
        "request_counts": request_counts, "metadata": b.metadata_,
    }


def show(s: Session, b: Batch) -> dict:
    return batch_dict(b, counts(s, b.id))


def create(s: Session, ctx: Context, *, input_file_id: str, endpoint: str, completion_window: str,
           metadata: dict[str, str] | None) -> Batch:
    """Record a batch (status validating) for the runner; 400 naming the field for what is wrong."""
    p = ctx.principal
    p.require(*SPENDERS)
    if endpoint not in ENDPOINTS:
        raise InvalidRequestError(f"'endpoint' must be one of {', '.join(ENDPOINTS)}; got '{endpoint}'.",
                                  param="endpoint", code="invalid_value")
    if completion_window not in WINDOWS:
        raise InvalidRequestError(f"'completion_window' must be one of {', '.join(WINDOWS)}; got "
                                  f"'{completion_window}'.", param="completion_window", code="invalid_value")
    f = s.get(StoredFile, input_file_id)
    if f is None or f.tenant_id != p.tenant_id:  # another tenant's file reads as missing
        raise InvalidRequestError(f"'input_file_id': file '{input_file_id}' does not exist.", param="input_file_id",
                                  code="invalid_file")
    if f.purpose != "batch":
        raise InvalidRequestError(f"'input_file_id': file '{input_file_id}' has purpose '{f.purpose}'; upload it "
                                  "with purpose 'batch'.", param="input_file_id", code="invalid_file")
    now = utcnow()
    b = Batch(id="batch_" + secrets.token_hex(12), tenant_id=p.tenant_id, key_id=p.key_id, endpoint=endpoint,
              input_file_id=input_file_id, completion_window=completion_window, status="validating",
              metadata_=metadata, errors=None, total=0, created_at=now, expires_at=now + WINDOWS[completion_window])
    s.add(b)
    s.flush()
    return b


def get(s: Session, ctx: Context, batch_id: str) -> Batch:
    b = s.get(Batch, batch_id)
    if b is None or not ctx.principal.can_see_tenant(b.tenant_id):
        raise NotFoundError(f"No batch with id '{batch_id}'.", param="batch_id")
    return b


def list_batches(s: Session, ctx: Context, *, after: str | None, limit: int) -> tuple[list[Batch], bool]:
    """The caller's tenant's batches, newest first."""
    tenant = ctx.principal.tenant_id
    stmt = select(Batch).where(Batch.tenant_id == tenant)
    key = (Batch.created_at, Batch.id)
    cursor = cursor_row(s, Batch, after, key, visible=lambda b: b.tenant_id == tenant,
                        error=f"'after' is not a batch id of yours: {after}")
    return keyset_page(s, stmt, key, after=cursor, limit=limit, order="desc")


def cancel(s: Session, ctx: Context, batch_id: str) -> Batch:
    """Ask the runner to stop (status cancelling): it starts no new line, keeps what finished and then
    writes the files (cancelled). A batch no runner has validated yet is cancelled at once."""
    b = get(s, ctx, batch_id)
    ctx.principal.require(*SPENDERS)
    if b.status not in ("validating", "in_progress"):
        raise InvalidRequestError(f"Batch {batch_id} is {b.status} and cannot be cancelled.", param="batch_id")
    now = utcnow()
    lease = aware(b.lease_expires_at)
    b.cancelling_at = now
    if b.status == "validating" and (b.lease_owner is None or lease is None or lease < now):
        b.status, b.cancelled_at = "cancelled", now
    else:
        b.status = "cancelling"
    s.flush()
    return b


def _claimable(now):  # an active batch no runner holds, or whose runner's lease lapsed
    return and_(Batch.status.in_(ACTIVE), or_(Batch.lease_owner.is_(None), Batch.lease_expires_at < now))


class BatchStore:
    """The runner's durable steps, each its own short transaction."""

    def __init__(self, db: Database, files: FileService, lease_s: float = 30.0) -> None:
        self.db, self.files, self.lease_s = db, files, lease_s

    def claim(self, owner: str) -> Batch | None:
        """Take the lease of the oldest batch with work left, or None."""
        now = utcnow()
        with self.db.session() as s:
            ids = list(s.scalars(select(Batch.id).where(_claimable(now)).order_by(Batch.created_at).limit(8)))
            for bid in ids:
                res = s.execute(update(Batch).where(Batch.id == bid, _claimable(now)).values(
                    lease_owner=owner, lease_expires_at=now + timedelta(seconds=self.lease_s)))
                if res.rowcount == 1:
                    s.commit()
                    return s.get(Batch, bid)
        return None

    def heartbeat(self, batch_id: str, owner: str) -> str | None:
        """Renew the lease; the batch's status, or None if the lease is no longer ours."""
        with self.db.session() as s:
            res = s.execute(update(Batch).where(Batch.id == batch_id, Batch.lease_owner == owner).values(
                lease_expires_at=utcnow() + timedelta(seconds=self.lease_s)))
            return s.scalar(select(Batch.status).where(Batch.id == batch_id)) if res.rowcount == 1 else None

    def release(self, batch_id: str, owner: str) -> None:
        """Hand the batch back unfinished (this process stops): another runner claims it at once."""
        with self.db.session() as s:
            s.execute(update(Batch).where(Batch.id == batch_id, Batch.lease_owner == owner)
                      .values(lease_owner=None, lease_expires_at=None))

    def store_lines(self, batch_id: str, owner: str, lines: list[LineRecord]) -> bool:
        """Record the validated lines and start the batch (in_progress, unless cancelled meanwhile), in one
        transaction: a crash before it commits leaves the batch validating, to be validated again."""
        now = utcnow()
        with self.db.session() as s:
            res = s.execute(update(Batch).where(Batch.id == batch_id, Batch.lease_owner == owner,
                                                Batch.status.in_(("validating", "cancelling")))
                            .values(total=len(lines), in_progress_at=now))
            if res.rowcount != 1:
                return False
            s.execute(update(Batch).where(Batch.id == batch_id, Batch.status == "validating")
                      .values(status="in_progress"))
            if lines:
                s.execute(insert(BatchLine), [
                    {"batch_id": batch_id, "line": r.line, "custom_id": r.custom_id,
                     "state": "failed" if r.error else "pending", "request": r.request, "response": None,
                     "error": r.error, "finished_at": now if r.error else None} for r in lines])
        return True

    def has_lines(self, batch_id: str) -> bool:
        with self.db.session() as s:
            return s.scalar(select(func.count()).where(BatchLine.batch_id == batch_id)) > 0

    def pending(self, batch_id: str, after_line: int, limit: int) -> list[tuple[int, str | None, dict]]:
        """Up to `limit` lines still to run, after `after_line`, in file order."""
        with self.db.session() as s:
            rows = s.execute(select(BatchLine.line, BatchLine.custom_id, BatchLine.request).where(
                BatchLine.batch_id == batch_id, BatchLine.state == "pending", BatchLine.line > after_line)
                .order_by(BatchLine.line).limit(limit)).all()
        return [(r[0], r[1], r[2]) for r in rows]

    @staticmethod
    def finish_line(batch_id: str, line: int, *, response: dict | None, error: dict | None):
        """What Meter.write_with runs with the line's usage: mark it done (a 2xx response) or failed, once."""
        ok = response is not None and 200 <= response.get("status_code", 0) < 300

        def mark(conn: Connection) -> None:
            res = conn.execute(update(BatchLine).where(
                BatchLine.batch_id == batch_id, BatchLine.line == line, BatchLine.state == "pending").values(
                state="done" if ok else "failed", response=response, error=error, finished_at=utcnow()))
            if res.rowcount != 1:
                raise LineTaken(f"line {line} of {batch_id} is already finished")
        return mark

    def fail_pending(self, batch_id: str, code: str, message: str) -> None:
        """Close every line still pending with an error (the batch expired)."""
        with self.db.session() as s:
            s.execute(update(BatchLine).where(BatchLine.batch_id == batch_id, BatchLine.state == "pending")
                      .values(state="failed", error={"code": code, "message": message}, finished_at=utcnow()))

    def set_status(self, batch_id: str, owner: str, status: str, **fields: Any) -> bool:
        now = utcnow()
        values: dict[str, Any] = {"status": status, f"{status}_at": now, **fields}
        if status not in ACTIVE:
            values.update(lease_owner=None, lease_expires_at=None)
        with self.db.session() as s:
            res = s.execute(update(Batch).where(Batch.id == batch_id, Batch.lease_owner == owner).values(**values))
        return res.rowcount == 1

    def finalize(self, batch_id: str, owner: str, status: str) -> bool:
        """Write the output file (lines that succeeded) and the error file (the others), then end the batch
        as `status` (completed, cancelled, expired or failed). Lines still pending are in neither."""
        with self.db.session() as s:
            b = s.get(Batch, batch_id)
            if b is None or b.lease_owner != owner:
                return False
            tenant = b.tenant_id
            rows = s.execute(select(BatchLine).where(BatchLine.batch_id == batch_id, BatchLine.state != "pending")
                             .order_by(BatchLine.line)).scalars().all()
            out = [_output_line(batch_id, r) for r in rows if r.state == "done"]
            err = [_output_line(batch_id, r) for r in rows if r.state == "failed"]
        ids: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
        for field_, purpose, lines in (("output_file_id", "batch_output", out), ("error_file_id", "batch_error", err)):
            if lines:
                data = "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines).encode()
                ids[field_] = self.files.store_output(tenant, purpose, f"{batch_id}_{purpose[6:]}.jsonl", data).id
        return self.set_status(batch_id, owner, status, **ids)


def _output_line(batch_id: str, r: BatchLine) -> dict:
    """OpenAI's line format: {id, custom_id, response: {status_code, request_id, body}, error}."""
    rid = "batch_req_" + hashlib.sha256(f"{batch_id}:{r.line}".encode()).hexdigest()[:24]  # stable on a rerun
    return {"id": rid, "custom_id": r.custom_id, "response": r.response, "error": r.error}
