"""The worker loop: claim a job, keep its lease alive from a heartbeat thread, run its handler.

A clean stop (SIGTERM) makes the running handler stop at its next step and hands the job back
(lease released, status kept) so another worker resumes it from its last checkpoint; a kill -9
leaves the lease to lapse, with the same result after `job_lease_s`."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import threading
from collections.abc import Mapping

from sqlalchemy import update

from llmaas.control.billing.budgets import Budgets
from llmaas.control.billing.catalog import Catalog
from llmaas.control.billing.metering import Meter
from llmaas.control.data.crypto import MasterKey
from llmaas.control.data.files import FileService
from llmaas.control.db.database import Database
from llmaas.control.db.models import Job
from llmaas.control.jobs.queue import JobQueue
from llmaas.core.config import Settings
from llmaas.core.outages import outage_code
from llmaas.workers.context import Handler, JobContext, JobFailed

log = logging.getLogger("llmaas.worker")
# A job stopped by the machine (a full disk, the database gone) rather than by its input is handed back, to resume
# from its last checkpoint once the condition clears, until it has been tried this many times in all.
MAX_ATTEMPTS_ON_OUTAGE = 5
OUTAGE_BACKOFF_S = 10.0


class Worker:
    def __init__(self, settings: Settings, handlers: Mapping[str, Handler]) -> None:
        self.settings = settings
        self.handlers = dict(handlers)  # job kind -> handler (workers/jobs.py has the registry)
        self.id = f"{socket.gethostname()}:{os.getpid()}:{random.randrange(16**6):06x}"
        self.db = Database(settings.resolved_database_url())
        self.queue = JobQueue(self.db, settings.job_lease_s)
        self.files = FileService(self.db, MasterKey.load(settings.master_key, settings.master_key_file),
                                 settings.artifact_dir / "files", settings.max_file_bytes)
        self.budgets = Budgets(self.db)
        self.catalog = Catalog(self.db, (settings.default_input_usd_per_mtok, settings.default_output_usd_per_mtok,
                                         settings.default_training_usd_per_mtok))
        self.meter = Meter(self.db, self.budgets, interval_s=1.0)
        self._stop = threading.Event()
        self._current: JobContext | None = None

    def stop(self, *_: object) -> None:
        """Finish cleanly: the running job stops at its next step and is handed back."""
        log.info("worker %s stopping", self.id)
        self._stop.set()
        if self._current is not None:
            self._current.release.set()

    def run(self, *, once: bool = False, poll_s: float = 1.0) -> None:
        handlers = self.handlers
        self.db.migrate()
        self.catalog.reload()
        self.meter.start()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        log.info("worker %s ready (jobs: %s)", self.id, ", ".join(handlers))
        try:
            while not self._stop.is_set():
                job = self.queue.claim(self.id, tuple(handlers))
                if job is None:
                    if once:
                        return
                    self._stop.wait(poll_s * (0.5 + random.random()))
                    continue
                self._run_one(job, handlers[job.kind])
                if once:
                    return
        finally:
            self.meter.close()
            self.db.close()

    def _run_one(self, job: Job, handler) -> None:
        ctx = JobContext(job, self.id, self.queue, self.files, self.budgets, self.catalog, self.meter, self.settings,
                         state=dict(job.state or {}))
        self._current = ctx
        beat = threading.Thread(target=self._heartbeat, args=(ctx,), name=f"heartbeat-{job.id}", daemon=True)
        beat.start()
        log.info("job %s claimed (attempt %d)", job.id, job.attempts)
        paused = False
        try:
            handler(ctx)
        except JobFailed as f:
            ctx.event(f"Job failed: {f.message}", level="error")
            self.queue.set_status(job.id, self.id, "failed",
                                  error={"code": f.code, "message": f.message, "param": f.param})
        except Exception as e:
            code = outage_code(e)
            if code is not None and job.attempts < MAX_ATTEMPTS_ON_OUTAGE:
                paused = True
                log.warning("job %s paused (%s: %s); handed back to resume from its last checkpoint", job.id, code, e)
                with contextlib.suppress(Exception):  # the database may be what is gone
                    ctx.event(f"Paused ({code}): {e}. It resumes from its last checkpoint once this clears.",
                              level="warning")
            else:
                log.exception("job %s failed", job.id)
                ctx.event(f"Job failed: {e}", level="error")
                self.queue.set_status(job.id, self.id, "failed",
                                      error={"code": code or "internal_error", "message": str(e)[:1000], "param": None})
        finally:
            if (ctx.release.is_set() or paused) and not ctx.cancel.is_set():
                with contextlib.suppress(Exception):  # if not now, its lease lapses and it is resumed all the same
                    self._hand_back(job.id)
            self._current = None
            ctx.done.set()
            beat.join(timeout=5)
        if paused:
            self._stop.wait(OUTAGE_BACKOFF_S)  # not straight back into the same full disk

    def _heartbeat(self, ctx: JobContext) -> None:
        interval = min(2.0, max(0.5, self.settings.job_lease_s / 3))  # also how fast a cancel is seen
        while True:
            try:
                ours, cancel = self.queue.heartbeat(ctx.job.id, self.id, ctx.state or None)
            except Exception:
                log.exception("heartbeat of job %s failed", ctx.job.id)
                ours, cancel = True, False
            if cancel:
                ctx.cancel.set()
            if not ours:
                ctx.release.set()  # another worker took over (our lease lapsed): stop, don't write
                return
            if ctx.done.wait(interval):
                return

    def _hand_back(self, job_id: str) -> None:
        with self.db.session() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.lease_owner == self.id)
                      .values(lease_owner=None, lease_expires_at=None))
        log.info("job %s handed back for another worker to resume", job_id)
