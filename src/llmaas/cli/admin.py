"""`llmaas admin`: the operator CLI. It works on the database directly, through the same control-plane
services as /v1/admin, so an operator can bootstrap or recover without a running server. It acts as
the platform admin "cli" (that is the actor in the audit trail). Heavy modules are imported inside
the commands so that `llmaas --help` stays fast."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmaas.control.clock import from_unix
from llmaas.control.paging import page

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from llmaas.control.auth.keys import KeyService
    from llmaas.control.auth.principal import Context
    from llmaas.control.billing.catalog import Catalog
    from llmaas.control.db.database import Database
    from llmaas.control.db.models import Tenant
    from llmaas.core.errors import LlmaasError

admin_app = typer.Typer(no_args_is_help=True, help=(
    "Manage tenants, API keys, prices, usage and the audit log directly on the database (no server needed). "
    "Changes reach a running server within LLMAAS_KEY_CACHE_TTL_S seconds (keys, tenants)."))
tenants_app = typer.Typer(no_args_is_help=True, help="Tenants (organisations) and their limits.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys of a tenant: create, list, revoke, rotate.")
prices_app = typer.Typer(no_args_is_help=True, help="Model catalog prices (USD per million tokens).")
admin_app.add_typer(tenants_app, name="tenants")
admin_app.add_typer(keys_app, name="keys")
admin_app.add_typer(prices_app, name="prices")

# Options shared by many commands (typer reads these annotations at run time: only runtime types here).
DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", envvar="LLMAAS_DATA_DIR",
    help="Data dir holding the SQLite database (default ./.llmaas); LLMAAS_DATABASE_URL overrides the database.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON, exactly as the HTTP admin API returns it.")]
TenantRef = Annotated[str, typer.Option("--tenant", "-t", help="Tenant id (org-...) or tenant name.")]
Rpm = Annotated[int | None, typer.Option(help="Requests per minute.")]
Tpm = Annotated[int | None, typer.Option(help="Tokens per minute (prompt + max completion).")]
MaxParallel = Annotated[int | None, typer.Option(help="Requests in flight at once.")]
Budget = Annotated[str | None, typer.Option(help="Spend allowed per budget period, in USD (e.g. 25.50).")]
Period = Annotated[str | None, typer.Option(help="Budget period: daily, weekly or monthly (default monthly).")]
AlertFraction = Annotated[float | None, typer.Option(help="Log a budget alert at this fraction of it (default 0.8).")]
OptTenant = Annotated[str | None, typer.Option("--tenant", "-t", help="Tenant id or name (default: all tenants).")]
TenantArg = Annotated[str, typer.Argument(help="Tenant id (org-...) or name.")]
KeyArg = Annotated[str, typer.Argument(help="Key id (key-...).")]
Col = tuple[str, "str | Callable[[dict], Any]"]  # a table column: header, and a dict key or a function of the row

# Service errors name the HTTP field; say which flag that is.
_FLAGS = {"limits.rpm": "--rpm", "limits.tpm": "--tpm", "limits.max_parallel": "--max-parallel",
          "limits.budget_usd": "--budget", "limits.budget_period": "--budget-period",
          "limits.budget_alert_fraction": "--alert-fraction", "input_usd_per_mtok": "--input",
          "output_usd_per_mtok": "--output", "training_usd_per_mtok": "--training", "grace_seconds": "--grace-seconds",
          "expires_at": "--expires-in-days", "role": "--role", "models": "--models", "group_by": "--group-by",
          "end_date": "--end"}


@dataclass
class _Admin:
    db: Database
    ctx: Context
    keys: KeyService
    catalog: Catalog


def _die(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _explain(e: LlmaasError) -> str:
    flag = _FLAGS.get(e.param or "")
    return f"{e.message} (option {flag})" if flag else e.message


@contextmanager
def _admin(data_dir: Path | None) -> Iterator[_Admin]:
    """Open and migrate the database, acting as the platform admin "cli". Domain and database errors
    end the command with `error: ...` and exit code 1, never a traceback."""
    from alembic.util import CommandError
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    from llmaas.control.auth.keys import KeyService
    from llmaas.control.auth.principal import Context, Principal, Role
    from llmaas.control.auth.tenants import PLATFORM_TENANT
    from llmaas.control.billing.catalog import Catalog
    from llmaas.control.db.database import Database
    from llmaas.core.config import load_settings
    from llmaas.core.errors import LlmaasError

    try:
        st = load_settings(data_dir=data_dir)
        st.prepare_dirs()
        db = Database(st.resolved_database_url())
        try:
            db.migrate()
            ctx = Context(Principal(key_id=None, tenant_id=PLATFORM_TENANT, role=Role.ADMIN, label="cli"))
            yield _Admin(db, ctx, KeyService(db), Catalog(db, (
                st.default_input_usd_per_mtok, st.default_output_usd_per_mtok, st.default_training_usd_per_mtok)))
        finally:
            db.close()
    except LlmaasError as e:
        _die(_explain(e))
    except (SQLAlchemyError, CommandError, ValidationError, OSError) as e:
        _die(f"{type(e).__name__}: {(str(e).splitlines() or [repr(e)])[0]}")


def run_migrate(data_dir: Path | None) -> None:
    """`llmaas migrate`: create or upgrade the schema (opening the database migrates it)."""
    with _admin(data_dir) as a:
        url = a.db.engine.url.render_as_string(hide_password=True)
    typer.echo(f"database schema is up to date: {url}")


# --- helpers ---

def _resolve(s: Session, ref: str) -> Tenant:
    """A tenant by id, else by its (unique) name."""
    from sqlalchemy import select

    from llmaas.control.db.models import Tenant
    from llmaas.core.errors import NotFoundError

    t = s.get(Tenant, ref) or s.scalar(select(Tenant).where(Tenant.name == ref))
    if t is None:
        raise NotFoundError(f"No tenant with id or name '{ref}'.", param="tenant")
    return t


def _limits(rpm: int | None, tpm: int | None, max_parallel: int | None, budget: str | None, period: str | None,
            fraction: float | None) -> dict[str, Any]:
    """Only the limits given on the command line (the service validates them)."""
    given = {"rpm": rpm, "tpm": tpm, "max_parallel": max_parallel, "budget_usd": budget, "budget_period": period,
             "budget_alert_fraction": fraction}
    return {k: v for k, v in given.items() if v is not None}


def _emit(as_json: bool, obj: Any, human: Callable[[], None]) -> None:
    if as_json:
        typer.echo(json.dumps(obj, indent=2, default=str))
    else:
        human()


def _ts(v: int | None) -> str:
    return from_unix(v).strftime("%Y-%m-%d %H:%M:%S") if v else "-"


def _cell(v: Any) -> str:
    return "-" if v is None or v == "" else ",".join(map(str, v)) if isinstance(v, list) else str(v)


def _table(rows: list[dict], cols: list[Col]) -> None:
    if not rows:
        typer.echo("(none)")
        return
    cells = [[h for h, _ in cols]] + [[_cell(f(r) if callable(f) else r[f]) for _, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _limits_str(lim: dict) -> str:
    parts = [f"{k}={lim[k]}" for k in ("rpm", "tpm", "max_parallel") if lim.get(k) is not None]
    if lim.get("budget_usd") is not None:
        parts.append(f"budget={lim['budget_usd']}/{lim['budget_period']}")
    return " ".join(parts) or "unlimited"


def _tenant_out(a: _Admin, s: Session, t: Tenant) -> dict:
    """What GET /v1/admin/tenants/{id} returns: the tenant plus its budget this period."""
    from llmaas.control.auth import tenants
    from llmaas.control.auth.principal import Limits
    from llmaas.control.billing.budgets import Budgets

    return {**tenants.tenant_dict(t), "budget": Budgets(a.db).status(s, "tenant", t.id, Limits.of(t))}


def _spent(t: dict) -> str:
    b = t["budget"]
    return f"{b['spent_usd']}/{b['budget_usd']}" if b.get("budget_usd") else b["spent_usd"]


def _show_tenant(t: dict, heading: str | None = None) -> None:
    if heading:
        typer.echo(heading)
    b = t["budget"]
    for k, v in [("id", t["id"]), ("name", t["name"]), ("status", "disabled" if t["disabled"] else "active"),
                 ("created", _ts(t["created_at"])), ("limits", _limits_str(t["limits"])),
                 ("spent (USD)", f"{_spent(t)} since {b['period_start']}, {b['reserved_usd']} reserved")]:
        typer.echo(f"{k:<12} {v}")


def _show_secret(k: dict, what: str) -> None:
    typer.echo(f"{what} API key {k['id']} (role {k['role']}) in tenant {k['tenant_id']}.\n\n    {k['key']}\n")
    typer.echo("This secret is shown only once: store it now. It cannot be recovered, only rotated.")


_TENANT_COLS: list[Col] = [
    ("ID", "id"), ("NAME", "name"), ("STATUS", lambda t: "disabled" if t["disabled"] else "active"),
    ("CREATED", lambda t: _ts(t["created_at"])), ("LIMITS", lambda t: _limits_str(t["limits"])),
    ("SPENT (USD)", _spent)]
_KEY_COLS: list[Col] = [
    ("ID", "id"), ("NAME", "name"), ("ROLE", "role"), ("PREFIX", "prefix"), ("STATUS", "status"),
    ("MODELS", lambda k: k["models"] or "all"), ("LIMITS", lambda k: _limits_str(k["limits"])),
    ("CREATED", lambda k: _ts(k["created_at"])), ("EXPIRES", lambda k: _ts(k["expires_at"])),
    ("LAST USED", lambda k: _ts(k["last_used_at"]))]
_PRICE_COLS: list[Col] = [
    ("MODEL", "id"), ("INPUT $/MTOK", "input_usd_per_mtok"), ("OUTPUT $/MTOK", "output_usd_per_mtok"),
    ("TRAINING $/MTOK", "training_usd_per_mtok"), ("UPDATED", lambda p: _ts(p["updated_at"]))]
_AUDIT_COLS: list[Col] = [
    ("ID", "id"), ("TIME", lambda r: _ts(r["at"])), ("ACTOR", lambda r: r["actor"]["name"]), ("ACTION", "action"),
    ("TARGET", lambda r: f"{r['target']['type']}:{r['target']['id']}"), ("TENANT", lambda r: r["target"]["tenant_id"])]


# --- tenants ---

@tenants_app.command("create")
def tenants_create(name: Annotated[str, typer.Argument(help="Unique tenant name.")], rpm: Rpm = None,
                   tpm: Tpm = None, max_parallel: MaxParallel = None, budget: Budget = None,
                   budget_period: Period = None, alert_fraction: AlertFraction = None, data_dir: DataDir = None,
                   as_json: AsJson = False) -> None:
    """Create a tenant; limits not given are unlimited."""
    from llmaas.control.auth import tenants

    limits = _limits(rpm, tpm, max_parallel, budget, budget_period, alert_fraction)
    with _admin(data_dir) as a, a.db.session() as s:
        out = _tenant_out(a, s, tenants.create(s, a.ctx, name, limits))
    _emit(as_json, out, lambda: _show_tenant(out, f"Created tenant {out['id']} ({out['name']})."))


@tenants_app.command("list")
def tenants_list(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """List every tenant with its limits and this period's spend."""
    from llmaas.control.auth import tenants

    with _admin(data_dir) as a, a.db.session() as s:
        items = [_tenant_out(a, s, t) for t in tenants.list_visible(s, a.ctx)]
    _emit(as_json, page(items, False), lambda: _table(items, _TENANT_COLS))


@tenants_app.command("show")
def tenants_show(tenant: TenantArg, data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Show one tenant: its limits and its budget status for the current period."""
    with _admin(data_dir) as a, a.db.session() as s:
        out = _tenant_out(a, s, _resolve(s, tenant))
    _emit(as_json, out, lambda: _show_tenant(out))


@tenants_app.command("update")
def tenants_update(
    tenant: TenantArg, name: Annotated[str | None, typer.Option(help="New name.")] = None,
    disabled: Annotated[bool | None, typer.Option(
        "--disable/--enable", help="Disable the tenant (its keys stop working) or enable it again.")] = None,
    rpm: Rpm = None, tpm: Tpm = None, max_parallel: MaxParallel = None, budget: Budget = None,
    budget_period: Period = None, alert_fraction: AlertFraction = None,
    clear: Annotated[str | None, typer.Option(
        help="Comma list of limits to remove (make unlimited): rpm,tpm,max_parallel,budget.")] = None,
    data_dir: DataDir = None, as_json: AsJson = False,
) -> None:
    """Rename, disable/enable, or change limits; only the given flags change."""
    from llmaas.control.auth import tenants
    from llmaas.core.errors import InvalidRequestError

    limits = _limits(rpm, tpm, max_parallel, budget, budget_period, alert_fraction)
    with _admin(data_dir) as a, a.db.session() as s:
        for c in filter(None, (c.strip().replace("-", "_") for c in (clear or "").split(","))):
            if c not in ("rpm", "tpm", "max_parallel", "budget"):
                raise InvalidRequestError(f"--clear takes rpm, tpm, max_parallel or budget, not '{c}'.")
            limits["budget_usd" if c == "budget" else c] = None
        if name is None and disabled is None and not limits:
            raise InvalidRequestError("Nothing to change: give --name, --disable/--enable, a limit or --clear.")
        t = tenants.update_tenant(s, a.ctx, _resolve(s, tenant).id, name=name, disabled=disabled, limits=limits)
        out = _tenant_out(a, s, t)
    _emit(as_json, out, lambda: _show_tenant(out, f"Updated tenant {out['id']}."))


@tenants_app.command("delete")
def tenants_delete(tenant: TenantArg,
                   yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
                   data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Delete a tenant: it is disabled and all its keys are revoked; usage and audit history stay."""
    from llmaas.control.auth import tenants

    with _admin(data_dir) as a:
        with a.db.session() as s:
            t = _resolve(s, tenant)
            tid, tname = t.id, t.name
        if not yes:  # asked outside any transaction: a prompt must not hold the database
            typer.confirm(f"Delete tenant {tid} ({tname}) and revoke all its keys?", abort=True)
        with a.db.session() as s:
            tenants.delete(s, a.ctx, tid)
    _emit(as_json, {"id": tid, "object": "tenant.deleted", "deleted": True},
          lambda: typer.echo(f"Deleted tenant {tid} ({tname}): disabled, its keys revoked."))


# --- keys ---

@keys_app.command("create")
def keys_create(
    tenant: TenantRef, name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    role: Annotated[str, typer.Option(help="owner, member, reader, or admin (platform tenant only).")] = "member",
    models: Annotated[str | None, typer.Option(help="Comma list of allowed models (default: all).")] = None,
    expires_in_days: Annotated[float | None, typer.Option(help="Expire after this many days (default: never).")] = None,
    rpm: Rpm = None, tpm: Tpm = None, max_parallel: MaxParallel = None, budget: Budget = None,
    budget_period: Period = None, alert_fraction: AlertFraction = None, data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Create an API key and print its secret, shown only once. For a platform admin key:
    --tenant org-platform --role admin."""
    from llmaas.control.auth import tenants
    from llmaas.control.auth.keys import key_dict
    from llmaas.control.db.models import Tenant
    from llmaas.core.errors import InvalidRequestError

    limits = _limits(rpm, tpm, max_parallel, budget, budget_period, alert_fraction)
    allowed = [m.strip() for m in models.split(",") if m.strip()] if models is not None else None
    with _admin(data_dir) as a, a.db.session() as s:
        if expires_in_days is not None and expires_in_days <= 0:
            raise InvalidRequestError("--expires-in-days must be greater than 0.")
        expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
        if tenant in (tenants.PLATFORM_TENANT, "platform") and s.get(Tenant, tenants.PLATFORM_TENANT) is None:
            # the server never started on this database: create the platform tenant admin keys live in
            tenants.create(s, a.ctx, "platform", tenant_id=tenants.PLATFORM_TENANT)
        k, secret = a.keys.create(s, a.ctx, _resolve(s, tenant).id, name=name, role=role, models=allowed,
                                  expires_at=expires, limits=limits)
        out = key_dict(k, secret)  # printed only after the commit: never show a secret that was not stored
    _emit(as_json, out, lambda: _show_secret(out, "Created"))
    if as_json:
        typer.echo("note: the secret in 'key' is shown only once.", err=True)


@keys_app.command("list")
def keys_list(tenant: TenantRef, data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """List a tenant's keys, by prefix (secrets are never stored)."""
    from llmaas.control.auth.keys import key_dict

    with _admin(data_dir) as a, a.db.session() as s:
        items = [key_dict(k) for k in a.keys.list(s, a.ctx, _resolve(s, tenant).id)]
    _emit(as_json, page(items, False), lambda: _table(items, _KEY_COLS))


@keys_app.command("revoke")
def keys_revoke(key_id: KeyArg, tenant: TenantRef, data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """Revoke a key now (irreversible)."""
    from llmaas.control.auth.keys import key_dict

    with _admin(data_dir) as a, a.db.session() as s:
        out = key_dict(a.keys.revoke(s, a.ctx, _resolve(s, tenant).id, key_id))
    _emit(as_json, out, lambda: typer.echo(f"Revoked API key {out['id']} ({out['prefix']})."))


@keys_app.command("rotate")
def keys_rotate(
    key_id: KeyArg, tenant: TenantRef,
    grace_seconds: Annotated[int, typer.Option(help="Keep the old key working this long (max 604800).")] = 0,
    data_dir: DataDir = None, as_json: AsJson = False,
) -> None:
    """Replace a key by a new secret (same role, models and limits), shown only once; the old key stops
    working now, or after --grace-seconds."""
    from llmaas.control.auth.keys import key_dict

    with _admin(data_dir) as a, a.db.session() as s:
        k, secret = a.keys.rotate(s, a.ctx, _resolve(s, tenant).id, key_id, grace_seconds=grace_seconds)
        out = key_dict(k, secret)
    def human() -> None:
        _show_secret(out, f"Rotated {key_id} into")
        typer.echo(f"The old key {f'works {grace_seconds} more seconds' if grace_seconds else 'is revoked'}.")

    _emit(as_json, out, human)
    if as_json:
        typer.echo("note: the secret in 'key' is shown only once.", err=True)


# --- prices ---

@prices_app.command("set")
def prices_set(
    model: Annotated[str, typer.Argument(help="Model id, as clients send it.")],
    input_price: Annotated[str | None, typer.Option("--input", help="USD per 1M prompt tokens.")] = None,
    output_price: Annotated[str | None, typer.Option("--output", help="USD per 1M completion tokens.")] = None,
    training_price: Annotated[str | None, typer.Option("--training", help="USD per 1M trained tokens.")] = None,
    data_dir: DataDir = None, as_json: AsJson = False,
) -> None:
    """Set a model's prices; a new model starts from the defaults. A running server applies them within 5 s."""
    from llmaas.control.billing.catalog import price_dict

    with _admin(data_dir) as a, a.db.session() as s:
        out = price_dict(a.catalog.set_price(s, a.ctx, model, input_usd_per_mtok=input_price,
                                             output_usd_per_mtok=output_price, training_usd_per_mtok=training_price))
    _emit(as_json, out, lambda: _table([out], _PRICE_COLS))


@prices_app.command("list")
def prices_list(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """List the model catalog's prices."""
    from llmaas.control.billing.catalog import price_dict

    with _admin(data_dir) as a, a.db.session() as s:
        items = [price_dict(p) for p in a.catalog.list(s)]
    _emit(as_json, page(items, False), lambda: _table(items, _PRICE_COLS))


# --- usage and audit ---

def _date(value: str | None, flag: str) -> date | None:
    from llmaas.core.errors import InvalidRequestError

    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        raise InvalidRequestError(f"{flag} must be a date YYYY-MM-DD, got '{value}'.") from None


@admin_app.command("usage")
def usage_cmd(
    tenant: OptTenant = None,
    start: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD (UTC).")] = None,
    end: Annotated[str | None, typer.Option(help="Last day, YYYY-MM-DD (inclusive).")] = None,
    group_by: Annotated[str | None, typer.Option(help="Comma list: model,key,day,tenant,endpoint,status.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    key: Annotated[str | None, typer.Option(help="Only this key id.")] = None,
    data_dir: DataDir = None, as_json: AsJson = False,
) -> None:
    """Report requests, tokens and cost over a date range, grouped as asked."""
    from llmaas.control.billing import usage

    groups = [g.strip() for g in (group_by or "").split(",") if g.strip()]
    with _admin(data_dir) as a, a.db.session() as s:
        out = usage.summarize(s, a.ctx, tenant_id=_resolve(s, tenant).id if tenant else None,
                              start=_date(start, "--start"), end=_date(end, "--end"), group_by=groups, model=model,
                              key_id=key)
    rows = out["data"]
    if groups and rows:  # a totals row under the groups
        rows = [*rows, {**dict.fromkeys(groups, ""), groups[0]: "TOTAL", **out["totals"]}]
    cols: list[Col] = [(c.upper().replace("_", " "), c) for c in
                       (*groups, "requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd")]
    _emit(as_json, out, lambda: _table(rows, cols))


@admin_app.command("audit")
def audit_cmd(
    tenant: OptTenant = None,
    action: Annotated[str | None, typer.Option(help="Action prefix, e.g. 'key.' or 'tenant.update'.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many entries, newest first.")] = 100,
    data_dir: DataDir = None, as_json: AsJson = False,
) -> None:
    """Show the audit trail: who changed what, and when (this CLI acts as "cli")."""
    from llmaas.control.auth import audit

    with _admin(data_dir) as a, a.db.session() as s:
        q = audit.AuditQuery(tenant_id=_resolve(s, tenant).id if tenant else None, action=action, limit=limit)
        rows, more = audit.query(s, a.ctx, q)
        items = [audit.to_dict(r) for r in rows]
    _emit(as_json, page(items, more), lambda: _table(items, _AUDIT_COLS))


# --- backup and restore ---

def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _files(n: int) -> str:
    return f"{n} file{'' if n == 1 else 's'}"


class _Bar:
    """A progress bar on stderr that appears with the first bytes copied, so refusals print alone."""

    def __init__(self, label: str, length: int) -> None:
        self.label, self.length = label, length
        self.bar: Any = None

    def __call__(self, n: int) -> None:
        import sys

        if self.bar is None:
            self.bar = typer.progressbar(length=self.length, label=self.label, file=sys.stderr, update_min_steps=64)
            self.bar.__enter__()
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@contextmanager
def _backup_errors() -> Iterator[None]:
    """Refusals and I/O errors end the command with `error: ...` and exit code 1, never a traceback."""
    import sqlite3

    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from llmaas.control.backup import BackupError

    try:
        yield
    except BackupError as e:
        _die(str(e))
    except (sqlite3.Error, SQLAlchemyError, CommandError, OSError) as e:
        _die(f"{type(e).__name__}: {(str(e).splitlines() or [repr(e)])[0]}")


@admin_app.command("backup")
def backup_cmd(
    path: Annotated[Path, typer.Argument(help="The archive to write, e.g. llmaas-2025-01-31.tar.gz (mode 0600).")],
    artifacts_only: Annotated[bool, typer.Option(
        "--artifacts-only", help="Only the data dir's files (for PostgreSQL: back the database up with pg_dump).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing archive.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Back up the database and the data dir's files into one archive, while the server runs.

    The SQLite database is copied online (a consistent snapshot), then the encrypted files, the master key,
    fine-tuned adapters and checkpoints. The archive holds the master key: keep it as safe as the data dir."""
    from contextlib import closing

    from llmaas.control.backup import BackupWriter
    from llmaas.core.config import load_settings

    with _backup_errors(), closing(BackupWriter(load_settings(data_dir=data_dir), path,
                                                artifacts_only=artifacts_only, force=force)) as w, \
            closing(_Bar("Backing up", w.total_bytes)) as bar:
        manifest = w.write(bar)
    for warning in manifest["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    db = f"the database (schema {manifest['schema_revision']}) and " if manifest["database"] else ""
    typer.echo(f"Backed up {db}{_files(manifest['files'] - bool(db))} ({_size(manifest['bytes'])}) to {path}.")


@admin_app.command("restore")
def restore_cmd(
    path: Annotated[Path, typer.Argument(help="An archive written by `llmaas admin backup`.")],
    data_dir: Annotated[Path, typer.Option(
        "--data-dir", help="The data dir to restore into; it must be empty or absent, unless --force.")],
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty data dir (not one a server uses).")
                     ] = False,
) -> None:
    """Restore a backup into a new data dir, migrating its database to this version.

    The checksums are verified before anything is written; the files land in a temp dir beside the target that
    is renamed into place only when complete."""
    from contextlib import closing

    from llmaas.control.backup import restore

    size = path.stat().st_size if path.is_file() else 0
    with _backup_errors(), closing(_Bar("Verifying and restoring", 2 * size)) as bar:  # read twice: verify, unpack
        m = restore(path, data_dir, force=force, progress=bar)
    before, now = m["schema_revision"], m.get("schema_revision_now")
    db = (f", database at schema {now}" + (f" (migrated from {before})" if before != now else "")
          if m["database"] else " (artifacts only: no database in this backup)")
    n = _files(m["files"] - bool(m["database"]))
    typer.echo(f"Restored {n} ({_size(m['bytes'])}) from the backup of {m['created_at']} into {data_dir}{db}.")
