"""Budget grants: each gateway process holds a slice of a budget (a grant), reserved on the budget's ledger
in one transaction, and admits requests against its slice in memory — a budgeted request then costs no
database round trip on the hot path.

Why it stays exact: a grant is part of the ledger's `reserved`, so `spent + reserved <= budget` holds on
the ledger as before, and a process admits a request only while the worst case of its in-flight requests
fits in its grant. Admitted worst-case spend therefore never exceeds the budget, for any number of
processes. Settlement (the meter, batched) moves real cost out of the grant into `spent`.

A grant grows by at most 1/`SHARE` of what is left of the budget (and at most `PER_GRANT` worst-case
requests), so near the end of a budget grants are exactly one request and every process still finds
budget. Its holder renews a lease on it; the slice of a process that died is returned to the ledger by
any other process once the lease runs out, and a holder gives back a grant it has not used for `idle_s`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmaas.control.db.database import Database

log = logging.getLogger("llmaas.budgets")

SHARE = 16
PER_GRANT = 1024

_LEDGER = "SELECT spent_pico, reserved_pico FROM budget_ledgers WHERE id = :id"
_GROW_LEDGER = ("UPDATE budget_ledgers SET reserved_pico = reserved_pico + :x "
                "WHERE id = :id AND spent_pico + reserved_pico + :x <= :b")
_GROW = "UPDATE budget_grants SET granted_pico = granted_pico + :x, expires_ms = :e WHERE id = :g"
_NEW = ("INSERT INTO budget_grants (ledger_id, holder, granted_pico, budget_pico, expires_ms) "
        "VALUES (:l, :h, :x, :b, :e) RETURNING id")
_UNRESERVE = ("UPDATE budget_ledgers SET reserved_pico = reserved_pico - "
              "COALESCE((SELECT granted_pico FROM budget_grants WHERE id = :g), 0) WHERE id = :l")
_DELETE = "DELETE FROM budget_grants WHERE id = :g"
_RENEW = "UPDATE budget_grants SET expires_ms = :e WHERE holder = :h"
_MINE = "SELECT id FROM budget_grants WHERE holder = :h"
_EXPIRED = "SELECT id, ledger_id FROM budget_grants WHERE expires_ms < :now AND holder <> :h"


def _ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Grant:
    id: int
    ledger_id: int
    budget_pico: int  # the budget it was granted under: a changed budget gets a new grant
    granted: int  # what this process holds on the ledger, less settlements the meter has not written yet
    held: int = 0  # worst case of the in-flight requests admitted against it
    used_at: float = field(default_factory=time.monotonic)

    @property
    def free(self) -> int:
        return self.granted - self.held


class LedgerMissing(Exception):
    def __init__(self, ledger_id: int) -> None:
        self.ledger_id = ledger_id


class Refused(Exception):
    def __init__(self, index: int, committed: int) -> None:
        self.index, self.committed = index, committed  # which ledger, and its spent + reserved


class Grants:
    """This process's grants, by ledger id. `take`/`release` run on the event loop (memory only);
    `grow` runs in a worker thread inside a reservation transaction; `maintain` in the meter's thread."""

    def __init__(self, db: Database, *, lease_s: float = 60.0, idle_s: float = 10.0) -> None:
        self.db, self.lease_ms, self.idle_s = db, int(lease_s * 1000), idle_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._current: dict[int, Grant] = {}  # by ledger id: the grant new requests are admitted against
        self._by_id: dict[int, Grant] = {}  # every grant held, also retired ones with requests in flight
        self._lock = threading.Lock()  # guards both and every Grant's counters
        self.growing = threading.Lock()  # one grow transaction at a time per process

    def take(self, ledgers: list[tuple[int, int]], cost: int) -> list[Grant] | None:
        """Admit `cost` on every (ledger id, budget) against this process's grants, or on none:
        None when a grant is missing, stale or too small (then `grow` it in a thread)."""
        with self._lock:
            gs = [self._current.get(lid) for lid, _ in ledgers]
            for g, (_, budget) in zip(gs, ledgers, strict=True):
                if g is None or g.budget_pico != budget or g.free < cost:
                    return None
            now = time.monotonic()
            for g in gs:
                g.held += cost
                g.used_at = now
            return gs  # type: ignore[return-value]

    def release(self, grant_id: int, reserved: int, actual: int) -> None:
        """A request admitted against a grant finished: free its worst case, consume its real cost."""
        with self._lock:
            g = self._by_id.get(grant_id)
            if g is not None:
                g.held -= reserved
                g.granted -= min(actual, reserved)

    def grow(self, cur: Any, index: int, ledger_id: int, budget: int, cost: int) -> Callable[[], None]:
        """In the caller's transaction, make room for `cost` on this process's grant of a ledger. Returns
        what to apply in memory once the transaction commits; raises Refused when the budget cannot cover it."""
        with self._lock:
            g = self._current.get(ledger_id)
            if g is not None and g.budget_pico != budget:
                # The budget changed: retire the grant (its requests in flight settle through it, and it is
                # given back when they are done) and take a new one under the new budget.
                del self._current[ledger_id]
                g = None
            need = cost if g is None else cost - g.free
            if g is not None:
                g.used_at = time.monotonic()
        if need <= 0:
            return lambda: None
        cur.execute(self.db.sql(_LEDGER + ("" if self.db.is_sqlite else " FOR UPDATE")), {"id": ledger_id})
        row = cur.fetchone()
        if row is None:
            raise LedgerMissing(ledger_id)
        spent, reserved = row
        left = budget - spent - reserved
        if need > left:
            raise Refused(index, spent + reserved)
        x = max(need, min(left // SHARE, cost * PER_GRANT))
        cur.execute(self.db.sql(_GROW_LEDGER), {"x": x, "id": ledger_id, "b": budget})
        if cur.rowcount != 1:
            raise Refused(index, spent + reserved)
        expires = _ms() + self.lease_ms
        if g is not None:
            cur.execute(self.db.sql(_GROW), {"x": x, "e": expires, "g": g.id})
            if cur.rowcount == 1:
                def apply_grow() -> None:
                    with self._lock:
                        g.granted += x  # type: ignore[union-attr]
                return apply_grow
            # another process reclaimed it (this one stalled past its lease): start a new grant
        cur.execute(self.db.sql(_NEW), {"l": ledger_id, "h": self.holder, "x": x, "b": budget, "e": expires})
        gid = cur.fetchone()[0]

        def apply_new() -> None:
            with self._lock:
                self._current[ledger_id] = self._by_id[gid] = Grant(gid, ledger_id, budget, x)
        return apply_new

    def _forget(self, g: Grant) -> None:
        self._by_id.pop(g.id, None)
        if self._current.get(g.ledger_id) is g:
            del self._current[g.ledger_id]

    def _return(self, cur: Any, grant_id: int, ledger_id: int) -> None:
        """Give a grant's remaining slice back to its ledger. Settlements of its requests that the meter
        writes later find no grant row and only add to `spent` (their reservation went back here)."""
        cur.execute(self.db.sql(_UNRESERVE), {"g": grant_id, "l": ledger_id})
        cur.execute(self.db.sql(_DELETE), {"g": grant_id})

    def maintain(self) -> None:
        """Renew this process's leases, forget grants another process reclaimed, reclaim grants whose
        holder died, and give back grants this process has not used for `idle_s`."""
        with self.growing:  # not while this process grows a grant: one budget transaction at a time
            self._maintain()

    def _maintain(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [g for g in self._by_id.values()
                    if g.held == 0 and (self._current.get(g.ledger_id) is not g or now - g.used_at > self.idle_s)]
            for g in idle:
                self._forget(g)
            known = set(self._by_id)  # grants made after this are not judged lost
        try:
            with self.db.raw_transaction() as cur:
                cur.execute(self.db.sql(_EXPIRED), {"now": _ms(), "h": self.holder})
                expired = cur.fetchall()
                # Ledger rows before grant rows, in ledger id order, as every budget transaction locks them.
                for gid, lid in sorted([(g.id, g.ledger_id) for g in idle] + expired, key=lambda x: (x[1], x[0])):
                    self._return(cur, gid, lid)
                cur.execute(self.db.sql(_RENEW), {"e": _ms() + self.lease_ms, "h": self.holder})
                cur.execute(self.db.sql(_MINE), {"h": self.holder})
                mine = {r[0] for r in cur.fetchall()}
        except BaseException:
            with self._lock:  # nothing was given back: keep them
                for g in idle:
                    self._by_id[g.id] = g
                    self._current.setdefault(g.ledger_id, g)
            raise
        with self._lock:
            lost = [g for gid, g in self._by_id.items() if gid in known and gid not in mine]
            for g in lost:
                self._forget(g)
        if lost:
            log.warning("%d budget grant(s) of this process were reclaimed by another (lease %.0f s ran out)",
                        len(lost), self.lease_ms / 1000)
        if expired:
            log.info("returned %d budget grant(s) of stopped gateway processes to their budgets", len(expired))

    def close(self) -> None:
        """Give every grant of this process back (clean stop, after the meter wrote all settlements)."""
        with self._lock:
            self._current, self._by_id = {}, {}
        with self.db.raw_transaction() as cur:
            cur.execute(self.db.sql("SELECT id, ledger_id FROM budget_grants WHERE holder = :h"), {"h": self.holder})
            for gid, lid in sorted(cur.fetchall(), key=lambda x: (x[1], x[0])):
                self._return(cur, gid, lid)
