"""`llmaas admin` / `llmaas migrate` against a throwaway SQLite data dir, checked through the services."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmaas.cli.main import app
from llmaas.control.auth.keys import KeyService
from llmaas.control.db.database import Database
from llmaas.control.db.models import UsageRecord
from llmaas.core.config import load_settings
from llmaas.core.errors import AuthenticationError

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LLMAAS_DATABASE_URL", raising=False)
    monkeypatch.delenv("LLMAAS_DATA_DIR", raising=False)
    return tmp_path / "data"


@pytest.fixture
def db(data_dir: Path):
    database = Database(load_settings(data_dir=data_dir).resolved_database_url())
    yield database
    database.close()


def cli(data_dir: Path, *args: str, code: int = 0, input: str | None = None):
    result = runner.invoke(app, ["admin", *args, "--data-dir", str(data_dir)], input=input)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def cli_json(data_dir: Path, *args: str) -> dict:
    return json.loads(cli(data_dir, *args, "--json").stdout)


def authenticate(db: Database, secret: str):
    # a fresh service each time: the CLI runs "in another process", so no cached verification may answer
    return KeyService(db).authenticate(secret, "test")


def secret_in(output: str) -> str:
    return next(w for w in output.split() if w.startswith("sk-llmaas-"))


def test_migrate_creates_the_database(data_dir: Path) -> None:
    result = runner.invoke(app, ["migrate", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert (data_dir / "llmaas.db").exists()
    assert "up to date" in result.stdout


def test_tenant_and_key_lifecycle(data_dir: Path, db: Database) -> None:
    t = cli_json(data_dir, "tenants", "create", "acme", "--rpm", "60", "--tpm", "5000", "--budget", "25.5",
                 "--budget-period", "weekly", "--alert-fraction", "0.5")
    assert t["object"] == "tenant" and t["id"].startswith("org-")
    assert t["limits"] == {"rpm": 60, "tpm": 5000, "max_parallel": None, "budget_usd": "25.50",
                           "budget_period": "weekly", "budget_alert_fraction": 0.5}

    created = cli(data_dir, "keys", "create", "--tenant", "acme", "--name", "ci", "--models", "smollm2",
                  "--max-parallel", "2")  # by name
    assert "shown only once" in created.stdout
    secret = secret_in(created.stdout)
    p = authenticate(db, secret)
    assert p.tenant_id == t["id"] and p.role == "member" and p.models == ("smollm2",)
    assert p.key_limits.max_parallel == 2 and p.tenant_limits.rpm == 60

    listed = cli(data_dir, "keys", "list", "--tenant", t["id"]).stdout
    assert secret[:18] in listed and secret not in listed and "ci" in listed
    key_id = cli_json(data_dir, "keys", "list", "--tenant", "acme")["data"][0]["id"]

    rotated = cli(data_dir, "keys", "rotate", "--tenant", "acme", key_id)
    new_secret = secret_in(rotated.stdout)
    assert new_secret != secret and "shown only once" in rotated.stdout
    with pytest.raises(AuthenticationError):
        authenticate(db, secret)
    new_id = authenticate(db, new_secret).key_id

    revoked = cli_json(data_dir, "keys", "revoke", "--tenant", "acme", new_id)
    assert revoked["status"] == "revoked" and "key" not in revoked
    with pytest.raises(AuthenticationError):
        authenticate(db, new_secret)


def test_rotate_with_grace_keeps_the_old_key(data_dir: Path, db: Database) -> None:
    cli(data_dir, "tenants", "create", "acme")
    k = cli_json(data_dir, "keys", "create", "--tenant", "acme", "--role", "owner")
    assert k["key"].startswith("sk-llmaas-") and k["role"] == "owner"
    new = cli_json(data_dir, "keys", "rotate", "--tenant", "acme", k["id"], "--grace-seconds", "600")
    assert new["rotated_from"] == k["id"]
    assert authenticate(db, k["key"]).key_id == k["id"]
    assert authenticate(db, new["key"]).key_id == new["id"]


def test_tenants_update_show_list_delete(data_dir: Path, db: Database) -> None:
    t = cli_json(data_dir, "tenants", "create", "acme", "--rpm", "10", "--budget", "5")
    secret = cli_json(data_dir, "keys", "create", "--tenant", "acme")["key"]
    upd = cli_json(data_dir, "tenants", "update", "acme", "--name", "acme-2", "--tpm", "99", "--clear", "rpm,budget")
    assert upd["name"] == "acme-2" and upd["limits"]["rpm"] is None and upd["limits"]["tpm"] == 99
    assert upd["limits"]["budget_usd"] is None
    shown = cli(data_dir, "tenants", "show", t["id"]).stdout
    assert "acme-2" in shown and "tpm=99" in shown
    assert [x["name"] for x in cli_json(data_dir, "tenants", "list")["data"]] == ["acme-2"]

    cli(data_dir, "tenants", "update", "acme-2", "--disable")
    with pytest.raises(AuthenticationError):
        authenticate(db, secret)
    cli(data_dir, "tenants", "update", "acme-2", "--enable")
    assert authenticate(db, secret).tenant_id == t["id"]

    cli(data_dir, "tenants", "delete", "acme-2", input="n\n", code=1)  # declined: nothing happens
    assert authenticate(db, secret).tenant_id == t["id"]
    assert cli_json(data_dir, "tenants", "delete", "acme-2", "--yes")["deleted"] is True
    with pytest.raises(AuthenticationError):
        authenticate(db, secret)
    assert cli_json(data_dir, "tenants", "show", t["id"])["disabled"] is True


def test_platform_admin_key_on_a_fresh_database(data_dir: Path, db: Database) -> None:
    k = cli_json(data_dir, "keys", "create", "--tenant", "org-platform", "--role", "admin", "--name", "ops")
    assert authenticate(db, k["key"]).is_admin


def test_prices_set_and_list(data_dir: Path) -> None:
    p = cli_json(data_dir, "prices", "set", "smollm2", "--input", "0.15", "--output", "0.3")
    assert (p["input_usd_per_mtok"], p["output_usd_per_mtok"], p["training_usd_per_mtok"]) == ("0.15", "0.30", "0.50")
    listed = cli(data_dir, "prices", "list").stdout
    assert "smollm2" in listed and "0.15" in listed and "0.30" in listed
    assert [x["id"] for x in cli_json(data_dir, "prices", "list")["data"]] == ["smollm2"]


def test_audit_records_the_cli_as_actor(data_dir: Path) -> None:
    cli(data_dir, "tenants", "create", "acme")
    cli(data_dir, "keys", "create", "--tenant", "acme")
    cli(data_dir, "prices", "set", "m", "--input", "1")
    entries = cli_json(data_dir, "audit")["data"]
    assert [e["action"] for e in entries] == ["model.price", "key.create", "tenant.create"]
    assert {e["actor"]["name"] for e in entries} == {"cli"}
    assert [e["action"] for e in cli_json(data_dir, "audit", "--action", "key.", "--tenant", "acme")["data"]] == [
        "key.create"]
    table = cli(data_dir, "audit", "--limit", "1").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "TIME", "ACTOR", "ACTION"] and "cli" in table[1] and len(table) == 2


def test_usage_report(data_dir: Path, db: Database) -> None:
    tid = cli_json(data_dir, "tenants", "create", "acme")["id"]
    with db.session() as s:  # what the meter would have written
        for i, (model, day) in enumerate([("a", "2025-01-02"), ("a", "2025-01-02"), ("b", "2025-01-03"),
                                          ("a", "2025-02-01")]):
            s.add(UsageRecord(request_id=f"r{i}", tenant_id=tid, key_id="key-1", model=model, endpoint="chat",
                              prompt_tokens=10, completion_tokens=5, cached_tokens=0, cost_pico=2_000_000,
                              latency_ms=1.0, status="ok", created_at=datetime.now(UTC), day=day))
    report = cli_json(data_dir, "usage", "--tenant", "acme", "--start", "2025-01-01", "--end", "2025-01-31",
                      "--group-by", "model,day")
    assert report["object"] == "usage.report" and report["tenant_id"] == tid
    assert [(r["model"], r["day"], r["requests"]) for r in report["data"]] == [("a", "2025-01-02", 2),
                                                                               ("b", "2025-01-03", 1)]
    assert report["totals"]["total_tokens"] == 45 and report["totals"]["cost_usd"] == "0.000006"
    table = cli(data_dir, "usage", "--group-by", "model").stdout.splitlines()
    assert table[0].split()[:2] == ["MODEL", "REQUESTS"] and table[-1].split()[:2] == ["TOTAL", "4"]
    assert cli_json(data_dir, "usage", "--end", "2024-12-31")["data"] == []


@pytest.mark.parametrize(("args", "message"), [
    (["tenants", "create", "x", "--budget", "abc"], "must be a decimal amount in USD, got 'abc'"),
    (["tenants", "create", "x", "--budget-period", "yearly"], "daily, weekly, monthly"),
    (["keys", "list", "--tenant", "nope"], "No tenant with id or name 'nope'"),
    (["usage", "--start", "yesterday"], "--start must be a date YYYY-MM-DD"),
    (["usage", "--group-by", "colour"], "Cannot group by 'colour'"),
    (["usage", "--start", "2025-02-01", "--end", "2025-01-01"], "before 'start_date'. (option --end)"),
])
def test_domain_errors_exit_1_with_a_message(data_dir: Path, args: list[str], message: str) -> None:
    result = cli(data_dir, *args, code=1)
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert isinstance(result.exception, SystemExit)  # a clean exit, not a crash


def test_errors_leave_no_partial_state(data_dir: Path) -> None:
    cli(data_dir, "tenants", "create", "acme")
    assert "already exists" in cli(data_dir, "tenants", "create", "acme", code=1).stderr
    cli(data_dir, "keys", "create", "--tenant", "acme", "--role", "admin", code=1)  # admin keys: platform only
    assert cli_json(data_dir, "keys", "list", "--tenant", "acme")["data"] == []
