"""Budgets: spend per tenant and per key per period, reserved at admission and settled after.

A reservation is one conditional UPDATE per scope (`spent + reserved + cost <= budget`) in one
transaction, so it is atomic on SQLite (one writer) and PostgreSQL (row lock) and holds across any
number of gateway processes sharing the database: admitted worst-case spend never exceeds the budget."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from llmaas.control.catalog import Price, base_model
from llmaas.control.clock import period_start, utcnow
from llmaas.control.db.database import Database
from llmaas.control.db.models import BudgetLedger, ModelPrice
from llmaas.control.money import pico_to_usd
from llmaas.control.principal import Limits
from llmaas.core.errors import QuotaExceededError

log = logging.getLogger("llmaas.budgets")


@dataclass(frozen=True)
class BudgetScope:
    scope: str  # tenant | key
    scope_id: str
    limits: Limits


@dataclass(frozen=True)
class Hold:
    """A reservation on one ledger row, settled by the meter."""

    ledger_id: int
    scope: str
    scope_id: str
    reserved_pico: int
    budget_pico: int
    alert_fraction: float


def next_period(period: str, start: datetime) -> datetime:
    if period == "daily":
        return start + timedelta(days=1)
    if period == "weekly":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


class Budgets:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._ledgers: dict[tuple[str, str, str], int] = {}

    def _ledger_id(self, s: Session, scope: str, scope_id: str, start: str) -> int:
        key = (scope, scope_id, start)
        lid = self._ledgers.get(key)
        if lid is None:
            ins = (sqlite_insert if self.db.is_sqlite else pg_insert)(BudgetLedger).values(
                scope=scope, scope_id=scope_id, period_start=start, spent_pico=0, reserved_pico=0, alerted=False)
            s.execute(ins.on_conflict_do_nothing(index_elements=["scope", "scope_id", "period_start"]))
            lid = s.scalar(select(BudgetLedger.id).where(
                BudgetLedger.scope == scope, BudgetLedger.scope_id == scope_id, BudgetLedger.period_start == start))
            assert lid is not None
            self._ledgers[key] = lid
        return lid

    def reserve(self, scopes: list[BudgetScope], model: str, prompt_tokens: int, max_tokens: int,
                fallback: Price) -> tuple[list[Hold], Price]:
        """Reserve the worst-case cost on every scope that has a budget, or on none (429 insufficient_quota).
        The price is read in the same transaction, so a price change made through another process
        applies at once to budgeted requests; the price used is returned for settlement."""
        scopes = [b for b in scopes if b.limits.budget_pico is not None]
        if not scopes:
            return [], fallback
        now = utcnow()
        holds: list[Hold] = []
        with self.db.session() as s:
            row = s.get(ModelPrice, model) or s.get(ModelPrice, base_model(model))
            price = Price(row.input_pico, row.output_pico, row.training_pico) if row else fallback
            cost_pico = price.cost(prompt_tokens, max_tokens)
            for b in scopes:
                start = period_start(b.limits.budget_period, now)
                lid = self._ledger_id(s, b.scope, b.scope_id, start.isoformat())
                budget = b.limits.budget_pico or 0
                res = s.execute(
                    update(BudgetLedger)
                    .where(BudgetLedger.id == lid,
                           BudgetLedger.spent_pico + BudgetLedger.reserved_pico + cost_pico <= budget)
                    .values(reserved_pico=BudgetLedger.reserved_pico + cost_pico)
                )
                if res.rowcount != 1:
                    s.rollback()
                    row = s.get(BudgetLedger, lid)
                    left = max(0, budget - (row.spent_pico + row.reserved_pico)) if row else 0
                    reset = next_period(b.limits.budget_period, datetime.combine(start, datetime.min.time(),
                                                                                 tzinfo=now.tzinfo))
                    raise QuotaExceededError(
                        f"You exceeded your current quota: the {b.limits.budget_period} budget of "
                        f"{b.scope} {b.scope_id} is {pico_to_usd(budget)} USD and {pico_to_usd(left)} USD is "
                        f"left uncommitted; this request may cost up to {pico_to_usd(cost_pico)} USD. "
                        "Lower max_tokens, wait for running requests, or ask an admin to raise the budget.",
                        (reset - now).total_seconds(),
                    )
                holds.append(Hold(lid, b.scope, b.scope_id, cost_pico, budget, b.limits.budget_alert_fraction))
        return holds, price

    def settle(self, s: Session, hold: Hold, actual_pico: int) -> bool:
        """Turn a reservation into spend (called by the meter, in its batch transaction).
        Returns True when this settlement crossed the soft alert threshold for the first time."""
        s.execute(update(BudgetLedger).where(BudgetLedger.id == hold.ledger_id).values(
            reserved_pico=BudgetLedger.reserved_pico - hold.reserved_pico,
            spent_pico=BudgetLedger.spent_pico + min(actual_pico, hold.reserved_pico)))
        threshold = int(hold.budget_pico * hold.alert_fraction)
        res = s.execute(update(BudgetLedger).where(
            BudgetLedger.id == hold.ledger_id, BudgetLedger.alerted.is_(False),
            BudgetLedger.spent_pico >= threshold).values(alerted=True))
        return res.rowcount == 1

    def status(self, s: Session, scope: str, scope_id: str, limits: Limits) -> dict:
        start = period_start(limits.budget_period).isoformat()
        row = s.scalar(select(BudgetLedger).where(BudgetLedger.scope == scope, BudgetLedger.scope_id == scope_id,
                                                  BudgetLedger.period_start == start))
        return {"period_start": start, "budget_usd": pico_to_usd(limits.budget_pico),
                "spent_usd": pico_to_usd(row.spent_pico if row else 0),
                "reserved_usd": pico_to_usd(row.reserved_pico if row else 0),
                "alert_fraction": limits.budget_alert_fraction, "alerted": bool(row and row.alerted)}
