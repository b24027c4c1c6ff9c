"""Usage metering off the hot path: requests hand a UsageEvent to the Meter, a background thread
writes them in batches (usage rows + budget settlements + keys' last use) in one transaction.
`close()` drains the queue, so a clean stop loses nothing; a failed write is retried, not dropped."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, bindparam, insert, update
from sqlalchemy.orm import Session

from llmaas.control.auth import audit
from llmaas.control.auth.principal import Context, Principal, Role
from llmaas.control.billing.budgets import Budgets, Hold
from llmaas.control.billing.money import pico_to_usd
from llmaas.control.db.database import Database
from llmaas.control.db.models import ApiKey, UsageRecord

log = logging.getLogger("llmaas.metering")

_INSERT = insert(UsageRecord.__table__)
_LAST_USED = update(ApiKey.__table__).where(ApiKey.__table__.c.id == bindparam("kid")).values(
    last_used_at=bindparam("at"))
_SYSTEM = Context(Principal(key_id=None, tenant_id="org-platform", role=Role.ADMIN, label="system"))


@dataclass
class UsageEvent:
    request_id: str
    tenant_id: str
    key_id: str | None
    model: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_pico: int
    latency_ms: float
    status: str  # ok | error | cancelled
    at: datetime
    holds: list[Hold] = field(default_factory=list)
    attempts: int = 0  # failed writes of this record while the database was working

    def row(self) -> dict:
        return {"request_id": self.request_id, "tenant_id": self.tenant_id, "key_id": self.key_id,
                "model": self.model, "endpoint": self.endpoint, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cached_tokens": self.cached_tokens,
                "cost_pico": self.cost_pico, "latency_ms": self.latency_ms, "status": self.status,
                "created_at": self.at, "day": self.at.date().isoformat()}


_MAX_ATTEMPTS = 3  # a record that fails alone this often, while others are written, is dropped (logged)


class Meter:
    def __init__(self, db: Database, budgets: Budgets, *, interval_s: float = 0.25, batch: int = 2000,
                 last_used: Callable[[], dict[str, datetime]] | None = None,
                 periodic: Callable[[], None] | None = None, periodic_s: float = 5.0) -> None:
        self.db, self.budgets = db, budgets
        self.interval_s, self.batch = interval_s, batch
        self._q: queue.SimpleQueue[UsageEvent | None] = queue.SimpleQueue()
        self._pending: list[UsageEvent] = []
        self._last_used = last_used  # returns {key_id: last use} to record
        self._periodic, self._periodic_s = periodic, periodic_s  # e.g. refresh caches other processes change
        self._next_periodic = time.monotonic() + periodic_s
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llmaas-meter", daemon=True)
        self._thread.start()

    def submit(self, ev: UsageEvent) -> None:
        self._q.put(ev)

    def close(self) -> None:
        """Stop after writing everything submitted so far."""
        if self._thread is not None:
            self._q.put(None)
            self._stopping.set()
            self._thread.join(timeout=60)
            self._thread = None
        self._drain()
        if self._pending:
            self._write()
        if self._pending:
            log.error("%d usage records could not be written at shutdown", len(self._pending))

    def flush(self) -> None:
        """Write everything submitted so far now (tests, shutdown)."""
        self._drain()
        while self._pending:
            if not self._write():
                break

    def _drain(self) -> bool:
        stop = False
        while True:
            try:
                ev = self._q.get_nowait()
            except queue.Empty:
                return stop
            if ev is None:
                stop = True
            else:
                self._pending.append(ev)

    def _run(self) -> None:
        while True:
            deadline = time.monotonic() + self.interval_s
            stop = False
            if len(self._pending) < self.batch:
                try:  # idle: sleep until there is work
                    ev = self._q.get(timeout=self.interval_s)
                    stop = ev is None
                    if ev is not None:
                        self._pending.append(ev)
                except queue.Empty:
                    pass
                if not stop:
                    # Let the batch fill for the rest of the interval: one wake-up per batch, not one per
                    # request (each wake-up takes the GIL from the event loop).
                    self._stopping.wait(max(0.0, deadline - time.monotonic()))
            stop = self._drain() or stop
            if self._pending or self._last_used:
                self._write()
            if self._periodic and time.monotonic() >= self._next_periodic:
                self._next_periodic = time.monotonic() + self._periodic_s
                try:
                    self._periodic()
                except Exception:
                    log.exception("periodic refresh failed")
            if stop:
                return

    def write_with(self, events: list[UsageEvent], also: Callable[[Connection], None]) -> None:
        """Write `events` (usage rows and their budget settlements) and run `also` in the same transaction, in
        the caller's thread: a batch line is marked finished exactly when its usage is on record. Raises if the
        transaction fails (nothing of it is kept)."""
        if not self._commit(events, {}, also, reraise=True):  # pragma: no cover - _commit raised instead
            raise RuntimeError("usage write failed")

    def write_now(self, ev: UsageEvent) -> None:
        """Write one event in the caller's thread (background jobs: their usage is on record before they
        report success); handed to the background writer if that fails."""
        if not self._commit([ev], {}):
            self.submit(ev)

    def _write(self) -> bool:
        events, self._pending = self._pending[: self.batch], self._pending[self.batch:]
        used = self._last_used() if self._last_used else {}
        if not events and not used:
            return True
        if self._commit(events, used):
            return True
        # One bad record must not block the others: if the database itself works (an empty transaction
        # commits), write the records one by one; those that still fail are bad, dropped after a few tries.
        if self._commit([], {}):
            failed = [e for e in events if not self._commit([e], {})] if len(events) > 1 else list(events)
            for e in failed:
                e.attempts += 1
                if e.attempts >= _MAX_ATTEMPTS:
                    log.error("dropping usage record %s after %d failed writes: %s", e.request_id, e.attempts, e)
                    self.dropped += 1
            self._pending = [e for e in failed if e.attempts < _MAX_ATTEMPTS] + self._pending
            return not self._pending
        self._pending = events + self._pending  # the database is down: keep everything, retry
        time.sleep(min(1.0, self.interval_s * 4))
        return False

    def _commit(self, events: list[UsageEvent], used: dict[str, datetime],
                also: Callable[[Connection], None] | None = None, *, reraise: bool = False) -> bool:
        alerts: list[Hold] = []
        try:
            with self.db.write_lock, self.db.engine.begin() as conn:
                if also is not None:
                    also(conn)
                if events:
                    conn.execute(_INSERT, [e.row() for e in events])
                alerts = self.budgets.settle(conn, [(h, e.cost_pico) for e in events for h in e.holds])
                for key_id, at in used.items():
                    conn.execute(_LAST_USED, {"kid": key_id, "at": at})
                if alerts:
                    with Session(bind=conn) as s:
                        for h in alerts:
                            audit.record(s, _SYSTEM, "budget.alert", h.scope, h.scope_id,
                                         tenant_id=h.tenant_id,
                                         after={"budget_usd": pico_to_usd(h.budget_pico),
                                                "alert_fraction": h.alert_fraction})
                        s.flush()
        except Exception:
            if reraise:
                raise
            log.exception("writing %d usage records failed; will retry", len(events))
            return False
        for h in alerts:
            log.warning("budget alert: %s %s has spent over %.0f%% of its %s USD budget", h.scope, h.scope_id,
                        h.alert_fraction * 100, pico_to_usd(h.budget_pico))
        self.written += len(events)
        return True
