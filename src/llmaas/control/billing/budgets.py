"""Budgets: spend per tenant and per key per period, reserved at admission and settled after.

A reservation is one conditional UPDATE per scope (`spent + reserved + cost <= budget`) in one
transaction, so it is atomic on SQLite (one writer) and PostgreSQL (row lock) and holds across any
number of processes sharing the database: admitted worst-case spend never exceeds the budget.
Background jobs reserve so, directly; the gateway reserves a slice per process (budget_grants.py) and
admits requests against it in memory."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import Connection, select, text
from sqlalchemy.orm import Session

from llmaas.control.auth.principal import Limits
from llmaas.control.billing.budget_grants import Grant, Grants, LedgerMissing, Refused
from llmaas.control.billing.catalog import Price, base_model
from llmaas.control.billing.money import pico_to_usd
from llmaas.control.clock import period_start, utcnow
from llmaas.control.db.database import Database
from llmaas.control.db.models import BudgetLedger
from llmaas.core.errors import QuotaExceededError

log = logging.getLogger("llmaas.budgets")


@dataclass(frozen=True)
class BudgetScope:
    scope: str  # tenant | key
    scope_id: str
    limits: Limits
    tenant_id: str


@dataclass(frozen=True)
class Hold:
    """A reservation on one ledger row, settled by the meter."""

    ledger_id: int
    scope: str
    scope_id: str
    reserved_pico: int
    budget_pico: int
    alert_fraction: float
    tenant_id: str
    grant_id: int | None = None  # admitted against this process's grant (else reserved directly)


def next_period(period: str, start: datetime) -> datetime:
    if period == "daily":
        return start + timedelta(days=1)
    if period == "weekly":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


# Plain SQL on the DBAPI cursor for the reservation (the request hot path): through SQLAlchemy the
# overhead is ~4x the statements themselves. The meter's batch settlement goes through SQLAlchemy Core.
_PRICE = "SELECT input_pico, output_pico, training_pico FROM model_prices WHERE model = :m"
_LEDGER = "SELECT id FROM budget_ledgers WHERE scope = :s AND scope_id = :i AND period_start = :p"
_NEW_LEDGER = ("INSERT INTO budget_ledgers (scope, scope_id, period_start, spent_pico, reserved_pico, alerted) "
               "VALUES (:s, :i, :p, 0, 0, :f) ON CONFLICT (scope, scope_id, period_start) DO NOTHING")
_RESERVE = ("UPDATE budget_ledgers SET reserved_pico = reserved_pico + :c "
            "WHERE id = :id AND spent_pico + reserved_pico + :c <= :b")
_LEFT = "SELECT spent_pico + reserved_pico FROM budget_ledgers WHERE id = :id"
_GROW_TRIES = 8
_RETRY_SQLSTATES = ("40P01", "40001")  # PostgreSQL deadlock detected, serialization failure
_GRANT_SPEND = text("UPDATE budget_grants SET granted_pico = granted_pico - :a WHERE id = :g")
_GRANTED = text("SELECT COALESCE(SUM(granted_pico), 0) FROM budget_grants WHERE ledger_id = :id")
_SETTLE = text("UPDATE budget_ledgers SET reserved_pico = reserved_pico - :r, spent_pico = spent_pico + :a "
               "WHERE id = :id")
_ALERT = text("UPDATE budget_ledgers SET alerted = :t WHERE id = :id AND alerted = :f AND spent_pico >= :th")


class _Refused(Exception):
    def __init__(self, scope: BudgetScope, budget: int, start: date, cost: int, used: int) -> None:
        self.scope, self.budget, self.start, self.cost, self.used = scope, budget, start, cost, used


class Budgets:
    def __init__(self, db: Database, *, grant_lease_s: float = 60.0, grant_idle_s: float = 10.0) -> None:
        self.db = db
        self._ledgers: dict[tuple[str, str, str], int] = {}
        self.grants = Grants(db, lease_s=grant_lease_s, idle_s=grant_idle_s)

    def _ledger_id(self, scope: str, scope_id: str, start: str) -> int:
        """The ledger row of a scope's period, created in a transaction of its own: a row created inside
        a reservation that is then refused would vanish with the rollback, and its cached id with it."""
        key = (scope, scope_id, start)
        lid = self._ledgers.get(key)
        if lid is None:
            args = {"s": scope, "i": scope_id, "p": start}
            with self.db.raw_transaction() as cur:
                cur.execute(self.db.sql(_NEW_LEDGER), {**args, "f": False})
                cur.execute(self.db.sql(_LEDGER), args)
                lid = cur.fetchone()[0]
            self._ledgers[key] = lid  # only once committed
        return lid

    def reserve(self, scopes: list[BudgetScope], model: str, prompt_tokens: int, max_tokens: int,
                fallback: Price, *, training: bool = False) -> tuple[list[Hold], Price]:
        """Reserve the worst-case cost on every scope that has a budget, or on none (429 insufficient_quota).
        The price is read in the same transaction, so a price change made through another process
        applies at once to budgeted requests; the price used is returned for settlement."""
        scopes = [b for b in scopes if b.limits.budget_pico is not None]
        if not scopes:
            return [], fallback
        now = utcnow()
        holds: list[Hold] = []
        starts = [period_start(b.limits.budget_period, now) for b in scopes]
        ledgers = [self._ledger_id(b.scope, b.scope_id, st.isoformat()) for b, st in zip(scopes, starts, strict=True)]
        try:
            with self.db.raw_transaction() as cur:
                price = self._price(cur, model, fallback)
                cost_pico = prompt_tokens * price.training_pico if training else price.cost(prompt_tokens, max_tokens)
                # in ledger id order, as every budget transaction locks rows (no deadlocks on PostgreSQL)
                for b, start, lid in sorted(zip(scopes, starts, ledgers, strict=True), key=lambda x: x[2]):
                    budget = b.limits.budget_pico or 0
                    cur.execute(self.db.sql(_RESERVE), {"c": cost_pico, "id": lid, "b": budget})
                    if cur.rowcount != 1:
                        cur.execute(self.db.sql(_LEFT), {"id": lid})
                        raise _Refused(b, budget, start, cost_pico, cur.fetchone()[0] or 0)  # rolls back all scopes
                    holds.append(Hold(lid, b.scope, b.scope_id, cost_pico, budget, b.limits.budget_alert_fraction,
                                      b.tenant_id))
        except _Refused as r:
            raise self._quota_error(r.scope, r.budget, r.start, r.cost, r.used, now) from None
        return holds, price

    @staticmethod
    def _quota_error(scope: BudgetScope, budget: int, start: date, cost: int, used: int,
                     now: datetime) -> QuotaExceededError:
        midnight = datetime.combine(start, datetime.min.time(), tzinfo=now.tzinfo)
        reset = next_period(scope.limits.budget_period, midnight)
        return QuotaExceededError(
            f"You exceeded your current quota: the {scope.limits.budget_period} budget of "
            f"{scope.scope} {scope.scope_id} is {pico_to_usd(budget)} USD and "
            f"{pico_to_usd(max(0, budget - used))} USD is left uncommitted; this request may cost up to "
            f"{pico_to_usd(cost)} USD. Lower max_tokens, wait for running requests, or ask an admin to "
            "raise the budget.",
            (reset - now).total_seconds(),
        )

    @staticmethod
    def _key(b: BudgetScope, now: datetime) -> tuple[str, str, str]:
        """The ledger of a scope's current period, as (scope, scope id, period start)."""
        return b.scope, b.scope_id, period_start(b.limits.budget_period, now).isoformat()

    def _ledgers_of(self, scopes: list[BudgetScope], now: datetime) -> list[tuple[int, int]]:
        return [(self._ledger_id(*self._key(b, now)), b.limits.budget_pico or 0) for b in scopes]

    @staticmethod
    def _holds(scopes: list[BudgetScope], grants: list[Grant], cost: int) -> list[Hold]:
        return [Hold(g.ledger_id, b.scope, b.scope_id, cost, g.budget_pico, b.limits.budget_alert_fraction,
                     b.tenant_id, g.id) for b, g in zip(scopes, grants, strict=True)]

    def admit_cached(self, scopes: list[BudgetScope], cost_pico: int) -> list[Hold] | None:
        """The gateway's fast path, in memory: admit against this process's grants, or None when one must
        grow first (`admit`, in a thread). `scopes` are those with a budget."""
        now = utcnow()
        ids = [self._ledgers.get(self._key(b, now)) for b in scopes]
        if None in ids:
            return None
        ledgers = [(lid, b.limits.budget_pico or 0) for lid, b in zip(ids, scopes, strict=True)]
        grants = self.grants.take(ledgers, cost_pico)
        return None if grants is None else self._holds(scopes, grants, cost_pico)

    def admit(self, scopes: list[BudgetScope], model: str, prompt_tokens: int, max_tokens: int,
              fallback: Price) -> tuple[list[Hold], Price]:
        """Grow this process's grants so the request fits, in one transaction that also reads the current
        price, then admit it against them; QuotaExceededError when a budget cannot cover it."""
        now = utcnow()
        ledgers = self._ledgers_of(scopes, now)
        order = sorted(range(len(ledgers)), key=lambda i: ledgers[i][0])  # lock rows in ledger id order
        with self.grants.growing:
            # Requests that queued here behind one that grew the grant usually fit now, without a transaction.
            cost = fallback.cost(prompt_tokens, max_tokens)
            grants = self.grants.take(ledgers, cost)
            if grants is not None:
                return self._holds(scopes, grants, cost), fallback
            for attempt in range(_GROW_TRIES):  # the fast path may take the new room first: grow again
                try:
                    with self.db.raw_transaction() as cur:
                        price = self._price(cur, model, fallback)
                        cost = price.cost(prompt_tokens, max_tokens)
                        applies = [self.grants.grow(cur, i, *ledgers[i], cost) for i in order]
                except Refused as r:
                    b = scopes[r.index]
                    raise self._quota_error(b, ledgers[r.index][1], period_start(b.limits.budget_period, now),
                                            cost, r.committed, now) from None
                except LedgerMissing as e:  # a cached ledger id no longer resolves: look the ledgers up again
                    log.warning("budget ledger %d not found; resolving the ledgers of %s again", e.ledger_id,
                                [b.scope_id for b in scopes])
                    self._ledgers = {k: v for k, v in self._ledgers.items() if v != e.ledger_id}
                    ledgers = self._ledgers_of(scopes, now)
                    order = sorted(range(len(ledgers)), key=lambda i: ledgers[i][0])
                    continue
                except Exception as e:
                    if getattr(e, "sqlstate", None) not in _RETRY_SQLSTATES or attempt == _GROW_TRIES - 1:
                        raise
                    log.info("budget grant transaction retried after %s", type(e).__name__)
                    continue
                for apply in applies:
                    apply()
                grants = self.grants.take(ledgers, cost)
                if grants is not None:
                    return self._holds(scopes, grants, cost), price
        return self.reserve(scopes, model, prompt_tokens, max_tokens, fallback)  # contended: reserve directly

    def release(self, holds: list[Hold], actual_pico: int) -> None:
        """A gateway request finished: return its worst case to this process's grants (memory only;
        the meter writes the spend)."""
        for h in holds:
            if h.grant_id is not None:
                self.grants.release(h.grant_id, h.reserved_pico, actual_pico)

    def _price(self, cur, model: str, fallback: Price) -> Price:
        cur.execute(self.db.sql(_PRICE), {"m": model})
        row = cur.fetchone()
        if row is None and base_model(model) != model:
            cur.execute(self.db.sql(_PRICE), {"m": base_model(model)})
            row = cur.fetchone()
        return Price(*row) if row else fallback

    def settle(self, conn: Connection, settlements: list[tuple[Hold, int]]) -> list[Hold]:
        """Turn reservations into spend, one UPDATE per ledger for the whole batch (called by the meter
        in its batch transaction). Returns the holds whose ledger crossed its soft alert threshold now."""
        per_ledger: dict[tuple[int, int | None], tuple[int, int, Hold]] = {}
        for hold, actual in settlements:
            key = (hold.ledger_id, hold.grant_id)
            r, a, _ = per_ledger.get(key, (0, 0, hold))
            per_ledger[key] = (r + hold.reserved_pico, a + min(actual, hold.reserved_pico), hold)
        alerts = []
        # In ledger id order, and a ledger row before its grant row: the order every budget transaction
        # locks rows in (grow, give back), so that on PostgreSQL they cannot deadlock.
        ordered = sorted(per_ledger.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))
        for (lid, gid), (reserved, actual, hold) in ordered:
            if gid is None:
                conn.execute(_SETTLE, {"r": reserved, "a": actual, "id": lid})
            else:
                conn.execute(_SETTLE, {"r": 0, "a": actual, "id": lid})
                # Spend out of the grant; a grant already given back took its reservation with it.
                if conn.execute(_GRANT_SPEND, {"a": actual, "g": gid}).rowcount == 1:
                    conn.execute(_SETTLE, {"r": actual, "a": 0, "id": lid})
            threshold = int(hold.budget_pico * hold.alert_fraction)
            if conn.execute(_ALERT, {"id": lid, "th": threshold, "t": True, "f": False}).rowcount == 1:
                alerts.append(hold)
        return alerts

    def status(self, s: Session, scope: str, scope_id: str, limits: Limits) -> dict:
        start = period_start(limits.budget_period).isoformat()
        row = s.scalar(select(BudgetLedger).where(BudgetLedger.scope == scope, BudgetLedger.scope_id == scope_id,
                                                  BudgetLedger.period_start == start))
        granted = s.scalar(_GRANTED, {"id": row.id}) if row else 0
        return {"period_start": start, "budget_usd": pico_to_usd(limits.budget_pico),
                "spent_usd": pico_to_usd(row.spent_pico if row else 0),
                # reserved: held by running jobs; granted: set aside by gateway processes, which admit
                # requests against it in memory (their in-flight requests are inside it)
                "reserved_usd": pico_to_usd(row.reserved_pico - granted if row else 0),
                "granted_usd": pico_to_usd(granted),
                "alert_fraction": limits.budget_alert_fraction, "alerted": bool(row and row.alerted)}
