"""A job that meets a full disk is not failed: it is handed back and resumed from its last checkpoint, and only
a disk that stays full through every attempt fails it, with the cause as its error code."""

from __future__ import annotations

import errno
import threading

import pytest

from llmaas.control.db.database import Database
from llmaas.control.db.models import Job
from llmaas.control.jobs.queue import new_job
from llmaas.core.config import Settings
from llmaas.workers import worker as worker_mod
from llmaas.workers.worker import Worker
from tests.unit.conftest import ADMIN_KEY


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    monkeypatch.setattr(worker_mod, "OUTAGE_BACKOFF_S", 0.01)
    s = Settings(backend="fake", data_dir=tmp_path, admin_key=ADMIN_KEY, job_lease_s=5)
    s.prepare_dirs()
    Database(s.resolved_database_url()).migrate()
    return s


def _job(s: Settings) -> str:
    db = Database(s.resolved_database_url())
    with db.session() as ses:
        return new_job(ses, prefix="ftjob", kind="fine_tune", tenant_id="t", key_id=None, status="queued", spec={}).id


def _run(s: Settings, handler, jobs: int) -> Job:
    w = Worker(s, {"fine_tune": handler})
    t = threading.Thread(target=lambda: [w.run(once=True) for _ in range(jobs)])
    t.start()
    t.join(60)
    assert not t.is_alive()
    with Database(s.resolved_database_url()).session() as ses:
        return ses.query(Job).one()


def test_a_full_disk_hands_the_job_back_and_it_resumes_from_its_checkpoint(settings):
    _job(settings)
    seen: list[dict] = []

    def handler(ctx) -> None:
        seen.append(dict(ctx.state))
        if not ctx.state:  # first attempt: a checkpoint at step 3, then the disk fills while writing the next
            ctx.state["checkpoint_step"] = 3
            ctx.queue.heartbeat(ctx.job.id, ctx.worker, ctx.state)
            raise OSError(errno.ENOSPC, "No space left on device")
        ctx.queue.set_status(ctx.job.id, ctx.worker, "succeeded")

    job = _run(settings, handler, jobs=2)
    assert seen == [{}, {"checkpoint_step": 3}]  # the second attempt started from the checkpoint
    assert job.status == "succeeded" and job.attempts == 2


def test_a_disk_that_stays_full_fails_the_job_with_its_cause(settings):
    _job(settings)

    def handler(ctx) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    job = _run(settings, handler, jobs=worker_mod.MAX_ATTEMPTS_ON_OUTAGE)
    assert job.status == "failed" and job.error["code"] == "insufficient_storage"
    assert job.attempts == worker_mod.MAX_ATTEMPTS_ON_OUTAGE


def test_a_bug_in_the_job_still_fails_it_at_once(settings):
    _job(settings)

    def handler(ctx) -> None:
        raise ValueError("a bug")

    job = _run(settings, handler, jobs=1)
    assert job.status == "failed" and job.error["code"] == "internal_error" and job.attempts == 1
