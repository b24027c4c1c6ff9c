"""The durable job queue, shared by every kind of background work (fine-tunes and evals).

A worker *claims* a job by taking its lease (a conditional UPDATE: exactly one worker wins, on SQLite and
PostgreSQL alike) and keeps it by heartbeat. If the worker dies (kill -9), the lease lapses and the next
claim picks the job up again; the handler resumes from its last checkpoint. Cancellation is a flag the
heartbeat reports back, so a running job stops within one step."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from llmaas.control.auth.principal import SPENDERS, Context
from llmaas.control.clock import utcnow
from llmaas.control.db.database import Database
from llmaas.control.db.models import Job, JobEvent
from llmaas.control.paging import cursor_row, keyset_page
from llmaas.core.errors import InvalidRequestError

ACTIVE = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")


def _claimable(now):
    # Unowned (new, or handed back by a worker that stopped cleanly), or owned by a worker whose lease lapsed.
    return and_(Job.cancel_requested.is_(False), Job.status.in_(ACTIVE),
                or_(Job.lease_owner.is_(None), Job.lease_expires_at < now))


def newest_first(s: Session, tenant_id: str, kind: str, *, after: str | None, limit: int,
                 keep: Callable[[Job], bool] | None = None) -> tuple[list[Job], bool]:
    """A page of a tenant's jobs of one kind, newest first, after the job with id `after` (a 400 naming `after`
    when that is not one of them, as for files and batches); `keep` filters (in Python, read in chunks).
    Returns (jobs, more)."""
    stmt = select(Job).where(Job.kind == kind, Job.tenant_id == tenant_id)
    cursor = cursor_row(s, Job, after, (Job.created_at, Job.id),
                        visible=lambda j: j.kind == kind and j.tenant_id == tenant_id,
                        error=f"'after' is not the id of one of your jobs of this kind: {after}")
    return keyset_page(s, stmt, (Job.created_at, Job.id), after=cursor, limit=limit, order="desc", keep=keep)


def new_job(s: Session, *, prefix: str, kind: str, tenant_id: str, key_id: str | None, status: str,
            spec: dict) -> Job:
    """Queue a job of `kind` (its id `<prefix>-<random>`), not yet claimed by any worker."""
    job = Job(id=f"{prefix}-{secrets.token_hex(12)}", tenant_id=tenant_id, key_id=key_id, kind=kind, status=status,
              created_at=utcnow(), attempts=0, cancel_requested=False, spec=spec, state={})
    s.add(job)
    return job


class JobQueue:
    def __init__(self, db: Database, lease_s: float = 30.0) -> None:
        self.db, self.lease_s = db, lease_s

    def claim(self, worker: str, kinds: tuple[str, ...]) -> Job | None:
        """Take the oldest claimable job of these kinds, or None."""
        now = utcnow()
        with self.db.session() as s:
            ids = list(s.scalars(select(Job.id).where(Job.kind.in_(kinds), _claimable(now))
                                 .order_by(Job.created_at).limit(8)))
            for jid in ids:
                res = s.execute(update(Job).where(Job.id == jid, _claimable(now)).values(
                    lease_owner=worker, lease_expires_at=now + timedelta(seconds=self.lease_s),
                    attempts=Job.attempts + 1))
                if res.rowcount == 1:
                    s.commit()
                    return s.get(Job, jid)
        # cancelled while pending and never claimed: nothing will run them, so close them here
        self.close_cancelled_pending()
        return None

    def close_cancelled_pending(self) -> None:
        now = utcnow()
        with self.db.session() as s:
            s.execute(update(Job).where(Job.cancel_requested.is_(True), Job.status.in_(ACTIVE),
                                        or_(Job.lease_owner.is_(None), Job.lease_expires_at < now))
                      .values(status="cancelled", finished_at=now, lease_owner=None))

    def heartbeat(self, job_id: str, worker: str, state: dict | None = None) -> tuple[bool, bool]:
        """Renew the lease. Returns (still ours, cancel requested)."""
        now = utcnow()
        with self.db.session() as s:
            values: dict[str, Any] = {"lease_expires_at": now + timedelta(seconds=self.lease_s)}
            if state is not None:
                values["state"] = state
            res = s.execute(update(Job).where(Job.id == job_id, Job.lease_owner == worker).values(**values))
            cancel = s.scalar(select(Job.cancel_requested).where(Job.id == job_id))
        return res.rowcount == 1, bool(cancel)

    def set_status(self, job_id: str, worker: str, status: str, **fields: Any) -> bool:
        now = utcnow()
        values: dict[str, Any] = {"status": status, **fields}
        if status == "running":
            values.setdefault("started_at", now)
        if status in TERMINAL:
            values.update(finished_at=now, lease_owner=None, lease_expires_at=None)
        with self.db.session() as s:
            res = s.execute(update(Job).where(Job.id == job_id, Job.lease_owner == worker).values(**values))
        return res.rowcount == 1

    def cancel(self, ctx: Context, job_id: str, find: Callable[[Session, Context, str], Job],
               show: Callable[[Job], dict], *, what: str, param: str) -> dict:
        """Cancel the job `find` gives the caller (its 404 first), for a spender; 400 if the job has ended. A
        job no worker holds is cancelled at once; a worker holding one stops within a step (its heartbeat
        reports the flag). Returns the job as `show` renders it, after."""
        with self.db.session() as s:
            job = find(s, ctx, job_id)
            ctx.principal.require(*SPENDERS)
            if job.status not in ACTIVE:
                raise InvalidRequestError(f"{what} is {job.status} and cannot be cancelled.", param=param)
            job.cancel_requested = True
        self.close_cancelled_pending()
        self.event(job_id, "Cancellation requested")
        with self.db.session() as s:
            return show(find(s, ctx, job_id))

    def event(self, job_id: str, message: str, *, level: str = "info", type_: str = "message",
              data: dict | None = None) -> None:
        with self.db.session() as s:
            s.add(JobEvent(job_id=job_id, created_at=utcnow(), level=level, type=type_, message=message[:2000],
                           data=data))
