"""The meter keeps writing when one usage record cannot be written (it is dropped after a few tries,
logged), and keeps everything while the database is down."""

from __future__ import annotations

from sqlalchemy import func, select

from llmaas.control.billing.budgets import Budgets
from llmaas.control.billing.metering import Meter, UsageEvent
from llmaas.control.clock import utcnow
from llmaas.control.db.database import Database
from llmaas.control.db.models import UsageRecord


def event(rid: str, **kw) -> UsageEvent:
    return UsageEvent(request_id=rid, tenant_id="org-t", key_id=None, model="m", endpoint="chat.completions",
                      prompt_tokens=1, completion_tokens=1, cached_tokens=0, cost_pico=1, latency_ms=1.0,
                      status="ok", at=utcnow(), **kw)


def count(db: Database) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(UsageRecord))


def test_a_bad_record_does_not_block_the_others(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.migrate()
    meter = Meter(db, Budgets(db), interval_s=0.01)
    bad = event("bad")
    bad.at = None  # type: ignore[assignment]  # a record that cannot be written
    for ev in (event("a"), bad, event("b")):
        meter.submit(ev)
    for _ in range(5):
        meter.flush()
    assert count(db) == 2 and meter.dropped == 1 and bad.attempts == 3


def test_everything_is_kept_while_the_database_is_down(tmp_path, monkeypatch):
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.migrate()
    meter = Meter(db, Budgets(db), interval_s=0.01)
    monkeypatch.setattr(meter, "_commit", lambda events, used: False)
    for rid in ("a", "b", "c"):
        meter.submit(event(rid))
    meter.flush()
    assert meter.dropped == 0 and [e.request_id for e in meter._pending] == ["a", "b", "c"]
    monkeypatch.undo()
    meter.flush()
    assert count(db) == 3
