"""Budgets: spend per tenant and per key per period, reserved at admission and settled after.

A reservation is one conditional UPDATE per scope (`spent + reserved + cost <= budget`) in one
transaction, so it is atomic on SQLite (one writer) and PostgreSQL (row lock) and holds across any
number of gateway processes sharing the database: admitted worst-case spend never exceeds the budget."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import Connection, select, text
from sqlalchemy.orm import Session

from llmaas.control.catalog import Price, base_model
from llmaas.control.clock import period_start, utcnow
from llmaas.control.db.database import Database
from llmaas.control.db.models import BudgetLedger
from llmaas.control.money import pico_to_usd
from llmaas.control.principal import Limits
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


def next_period(period: str, start: datetime) -> datetime:
    if period == "daily":
        return start + timedelta(days=1)
    if period == "weekly":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


# Plain SQL on the DBAPI cursor for the reservation (the request hot path): through SQLAlchemy the
# overhead was ~4x the statements themselves. The meter's batch settlement goes through SQLAlchemy Core.
_PRICE = "SELECT input_pico, output_pico, training_pico FROM model_prices WHERE model = :m"
_LEDGER = "SELECT id FROM budget_ledgers WHERE scope = :s AND scope_id = :i AND period_start = :p"
_NEW_LEDGER = ("INSERT INTO budget_ledgers (scope, scope_id, period_start, spent_pico, reserved_pico, alerted) "
               "VALUES (:s, :i, :p, 0, 0, :f) ON CONFLICT (scope, scope_id, period_start) DO NOTHING")
_RESERVE = ("UPDATE budget_ledgers SET reserved_pico = reserved_pico + :c "
            "WHERE id = :id AND spent_pico + reserved_pico + :c <= :b")
_LEFT = "SELECT spent_pico + reserved_pico FROM budget_ledgers WHERE id = :id"
_SETTLE = text("UPDATE budget_ledgers SET reserved_pico = reserved_pico - :r, spent_pico = spent_pico + :a "
               "WHERE id = :id")
_ALERT = text("UPDATE budget_ledgers SET alerted = :t WHERE id = :id AND alerted = :f AND spent_pico >= :th")


class _Refused(Exception):
    def __init__(self, scope: BudgetScope, budget: int, start: date, cost: int, used: int) -> None:
        self.scope, self.budget, self.start, self.cost, self.used = scope, budget, start, cost, used


class Budgets:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._ledgers: dict[tuple[str, str, str], int] = {}

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
                lid = self._ledgers[key] = cur.fetchone()[0]
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
                cur.execute(self.db.sql(_PRICE), {"m": model})
                row = cur.fetchone()
                if row is None and base_model(model) != model:
                    cur.execute(self.db.sql(_PRICE), {"m": base_model(model)})
                    row = cur.fetchone()
                price = Price(*row) if row else fallback
                cost_pico = prompt_tokens * price.training_pico if training else price.cost(prompt_tokens, max_tokens)
                for b, start, lid in zip(scopes, starts, ledgers, strict=True):
                    budget = b.limits.budget_pico or 0
                    cur.execute(self.db.sql(_RESERVE), {"c": cost_pico, "id": lid, "b": budget})
                    if cur.rowcount != 1:
                        cur.execute(self.db.sql(_LEFT), {"id": lid})
                        raise _Refused(b, budget, start, cost_pico, cur.fetchone()[0] or 0)  # rolls back all scopes
                    holds.append(Hold(lid, b.scope, b.scope_id, cost_pico, budget, b.limits.budget_alert_fraction,
                                      b.tenant_id))
        except _Refused as r:
            reset = next_period(r.scope.limits.budget_period,
                                datetime.combine(r.start, datetime.min.time(), tzinfo=now.tzinfo))
            raise QuotaExceededError(
                f"You exceeded your current quota: the {r.scope.limits.budget_period} budget of "
                f"{r.scope.scope} {r.scope.scope_id} is {pico_to_usd(r.budget)} USD and "
                f"{pico_to_usd(max(0, r.budget - r.used))} USD is left uncommitted; this request may cost up to "
                f"{pico_to_usd(r.cost)} USD. Lower max_tokens, wait for running requests, or ask an admin to "
                "raise the budget.",
                (reset - now).total_seconds(),
            ) from None
        return holds, price

    def settle(self, conn: Connection, settlements: list[tuple[Hold, int]]) -> list[Hold]:
        """Turn reservations into spend, one UPDATE per ledger for the whole batch (called by the meter
        in its batch transaction). Returns the holds whose ledger crossed its soft alert threshold now."""
        per_ledger: dict[int, tuple[int, int, Hold]] = {}
        for hold, actual in settlements:
            r, a, _ = per_ledger.get(hold.ledger_id, (0, 0, hold))
            per_ledger[hold.ledger_id] = (r + hold.reserved_pico, a + min(actual, hold.reserved_pico), hold)
        alerts = []
        for lid, (reserved, actual, hold) in per_ledger.items():
            conn.execute(_SETTLE, {"r": reserved, "a": actual, "id": lid})
            threshold = int(hold.budget_pico * hold.alert_fraction)
            if conn.execute(_ALERT, {"id": lid, "th": threshold, "t": True, "f": False}).rowcount == 1:
                alerts.append(hold)
        return alerts

    def status(self, s: Session, scope: str, scope_id: str, limits: Limits) -> dict:
        start = period_start(limits.budget_period).isoformat()
        row = s.scalar(select(BudgetLedger).where(BudgetLedger.scope == scope, BudgetLedger.scope_id == scope_id,
                                                  BudgetLedger.period_start == start))
        return {"period_start": start, "budget_usd": pico_to_usd(limits.budget_pico),
                "spent_usd": pico_to_usd(row.spent_pico if row else 0),
                "reserved_usd": pico_to_usd(row.reserved_pico if row else 0),
                "alert_fraction": limits.budget_alert_fraction, "alerted": bool(row and row.alerted)}
