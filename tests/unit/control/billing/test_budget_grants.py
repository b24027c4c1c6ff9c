"""Budget grants: processes admit budgeted requests in memory against slices of a budget, and admitted
worst-case spend still never exceeds the budget — across processes, crashes, budget changes and idle time."""

from __future__ import annotations

import random
import time
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from llmaas.control.auth.principal import Limits
from llmaas.control.billing.budgets import Budgets, BudgetScope
from llmaas.control.billing.catalog import Price
from llmaas.control.billing.metering import Meter, UsageEvent
from llmaas.control.clock import utcnow
from llmaas.control.db.database import Database
from llmaas.control.db.models import BudgetGrant, BudgetLedger
from llmaas.core.errors import QuotaExceededError

PRICE = Price(1, 1, 0)  # 1 pico per token: a request of 10 prompt + 10 completion tokens costs at most 20
WORST = 20


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> Database:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else f"sqlite:///{tmp_path / 'db.sqlite'}"
    d = Database(url)
    d.migrate()
    yield d
    d.close()


def scope(budget: int) -> list[BudgetScope]:
    return [BudgetScope("tenant", "org-t", Limits(budget_pico=budget), "org-t")]


def admit(b: Budgets, budget: int):
    """The gateway's order: memory first, a growing transaction when that says no."""
    holds = b.admit_cached(scope(budget), WORST)
    return holds if holds is not None else b.admit(scope(budget), "m", 10, 10, PRICE)[0]


def settle(b: Budgets, meter: Meter, holds, actual: int) -> None:
    b.release(holds, actual)
    meter.submit(UsageEvent(request_id="r", tenant_id="org-t", key_id=None, model="m", endpoint="chat.completions",
                            prompt_tokens=10, completion_tokens=actual - 10, cached_tokens=0, cost_pico=actual,
                            latency_ms=1.0, status="ok", at=utcnow(), holds=holds))


def ledger(db: Database) -> tuple[int, int, int]:
    with db.session() as s:
        row = s.scalar(select(BudgetLedger))
        granted = s.scalar(select(func.coalesce(func.sum(BudgetGrant.granted_pico), 0)))
        return row.spent_pico, row.reserved_pico, granted


def test_processes_never_admit_more_than_the_budget_and_the_fast_path_needs_no_database(db):
    procs = [Budgets(db) for _ in range(3)]  # three gateway processes on one database
    meters = [Meter(db, b) for b in procs]
    budget = WORST * 1000
    rng = random.Random(7)
    admitted, in_flight, refused = 0, [], 0
    for _ in range(1400):
        i = rng.randrange(3)
        try:
            in_flight.append((i, admit(procs[i], budget)))
            admitted += 1
        except QuotaExceededError:
            refused += 1
        if in_flight and rng.random() < 0.6:  # finish a random request at its worst case
            j, holds = in_flight.pop(rng.randrange(len(in_flight)))
            settle(procs[j], meters[j], holds, WORST)
        spent, reserved, _ = ledger(db)
        assert spent + reserved <= budget
    for j, holds in in_flight:
        settle(procs[j], meters[j], holds, WORST)
    for m in meters:
        m.flush()
    assert admitted == 1000 and refused == 400  # every worst case fits exactly: all of it, not a request more
    spent, reserved, granted = ledger(db)
    assert spent == budget and reserved == granted == 0
    # Most admissions were in memory: grants are reused, so grow transactions are few.
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(BudgetGrant)) <= 3


def test_a_grant_is_returned_on_close_and_unused_worst_case_stays_in_budget(db):
    b = Budgets(db)
    meter = Meter(db, b)
    holds = admit(b, 10_000)
    assert b.admit_cached(scope(10_000), WORST) is not None  # the second one comes from the grant, in memory
    spent, reserved, granted = ledger(db)
    assert spent == 0 and reserved == granted > 2 * WORST
    settle(b, meter, holds, 15)  # used less than its worst case
    meter.flush()
    spent, reserved, granted = ledger(db)
    assert spent == 15 and reserved == granted
    b.grants.close()
    assert ledger(db) == (15, 0, 0)  # the in-flight second request's settlement now only adds spend
    with db.session() as s:
        status = b.status(s, "tenant", "org-t", Limits(budget_pico=10_000))
    assert Decimal(status["granted_usd"]) == Decimal(status["reserved_usd"]) == 0


def test_the_grant_of_a_dead_process_is_reclaimed_after_its_lease(db):
    dead = Budgets(db, grant_lease_s=0.05)
    admit(dead, 10_000)
    _, reserved, _ = ledger(db)
    assert reserved > 0
    time.sleep(0.1)
    alive = Budgets(db)
    alive.grants.maintain()
    assert ledger(db) == (0, 0, 0)


def test_settlement_of_a_request_whose_grant_was_reclaimed_adds_spend_only(db):
    slow = Budgets(db, grant_lease_s=0.05)
    meter = Meter(db, slow)
    holds = admit(slow, 10_000)
    time.sleep(0.1)
    Budgets(db).grants.maintain()  # another process reclaims the stalled one's grant
    slow.grants.maintain()  # the stalled one notices and forgets it
    assert slow.admit_cached(scope(10_000), WORST) is None
    settle(slow, meter, holds, WORST)
    meter.flush()
    assert ledger(db) == (WORST, 0, 0)


def test_a_lowered_budget_is_honoured_at_once_not_after_the_grant(db):
    b = Budgets(db)
    admit(b, 10_000)
    assert b.admit_cached(scope(10_000), WORST) is not None
    # The budget was lowered below what is committed: the old grant is given back, nothing new fits.
    assert b.admit_cached(scope(WORST), WORST) is None
    with pytest.raises(QuotaExceededError) as e:
        b.admit(scope(WORST), "m", 10, 10, PRICE)
    assert e.value.code == "insufficient_quota"


def test_an_idle_grant_is_given_back(db):
    b = Budgets(db, grant_idle_s=0.0)
    meter = Meter(db, b)
    holds = admit(b, 10_000)
    b.grants.maintain()
    assert ledger(db)[1] > 0  # in use: kept
    settle(b, meter, holds, WORST)
    meter.flush()
    b.grants.maintain()
    assert ledger(db) == (WORST, 0, 0)


def test_a_cached_ledger_id_that_no_longer_resolves_is_looked_up_again(db):
    b = Budgets(db)
    stale = b._ledger_id("tenant", "org-t", b._key(scope(10_000)[0], utcnow())[2])
    with db.session() as s:  # the row goes away behind the process's cache
        s.execute(BudgetLedger.__table__.delete())
    assert stale
    admit(b, 10_000)  # recreates the ledger instead of failing on the stale id
    spent, reserved, granted = ledger(db)
    assert spent == 0 and reserved == granted >= WORST
