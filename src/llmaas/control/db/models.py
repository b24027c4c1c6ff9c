"""Tables of the control plane. Money is stored as integer pico-USD (1e-12 USD): exact on every
database (SQLite has no decimal type) and summable in SQL; the API speaks decimal strings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class LimitColumns:
    """Limits a tenant and a key both carry; NULL means unlimited."""

    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    max_parallel: Mapped[int | None] = mapped_column(Integer)
    budget_pico: Mapped[int | None] = mapped_column(BigInteger)
    budget_period: Mapped[str] = mapped_column(String(16), default="monthly")
    budget_alert_fraction: Mapped[float] = mapped_column(Float, default=0.8)


class Tenant(LimitColumns, Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    metadata_: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    store_retention_days: Mapped[int | None] = mapped_column(Integer)  # stored completions; NULL: the default


class ApiKey(LimitColumns, Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # The first characters of the secret: shown in listings and used to find the row; the rest is only hashed.
    prefix: Mapped[str] = mapped_column(String(32), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    models: Mapped[list | None] = mapped_column(JSON)  # allowed model ids; NULL = all
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rotated_from: Mapped[str | None] = mapped_column(String(40))


class ModelPrice(Base):
    """The model catalog's prices, in pico-USD per token."""

    __tablename__ = "model_prices"

    model: Mapped[str] = mapped_column(String(300), primary_key=True)
    input_pico: Mapped[int] = mapped_column(BigInteger)
    output_pico: Mapped[int] = mapped_column(BigInteger)
    training_pico: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    batch_discount: Mapped[float | None] = mapped_column(Float)  # off the price for batch lines; NULL: the default


class BudgetLedger(Base):
    """Spend of one scope (tenant or key) in one budget period; `reserved` holds admitted, unsettled work."""

    __tablename__ = "budget_ledgers"
    __table_args__ = (UniqueConstraint("scope", "scope_id", "period_start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(8))  # tenant | key
    scope_id: Mapped[str] = mapped_column(String(40))
    period_start: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD (UTC)
    spent_pico: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_pico: Mapped[int] = mapped_column(BigInteger, default=0)
    alerted: Mapped[bool] = mapped_column(Boolean, default=False)


class BudgetGrant(Base):
    """The slice of a ledger's budget one gateway process holds (part of the ledger's `reserved`), under a
    lease its holder renews; requests are admitted against it in the holder's memory."""

    __tablename__ = "budget_grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ledger_id: Mapped[int] = mapped_column(ForeignKey("budget_ledgers.id"), index=True)
    holder: Mapped[str] = mapped_column(String(120), index=True)  # host:pid:random of the process
    granted_pico: Mapped[int] = mapped_column(BigInteger)
    budget_pico: Mapped[int] = mapped_column(BigInteger)  # the budget it was granted under
    expires_ms: Mapped[int] = mapped_column(BigInteger, index=True)  # lease end, Unix ms


class UsageRecord(Base):
    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_tenant_time", "tenant_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(300))
    endpoint: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_pico: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(16))  # ok | error | cancelled
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    day: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD (UTC), so grouping by day is portable SQL


class AuditRecord(Base):
    """Append-only (the migration installs triggers that refuse UPDATE and DELETE)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_tenant_time", "tenant_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor_key_id: Mapped[str | None] = mapped_column(String(40))
    actor_tenant_id: Mapped[str | None] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(64))  # "key:<id>", "cli", "system"
    action: Mapped[str] = mapped_column(String(64), index=True)  # e.g. key.create, tenant.update
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(300))
    tenant_id: Mapped[str | None] = mapped_column(String(40))  # whose resource it was
    source_ip: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    before: Mapped[dict | None] = mapped_column(JSON)
    after: Mapped[dict | None] = mapped_column(JSON)


class StoredFile(Base):
    """An uploaded file; its bytes live encrypted in the artifact dir (never in the database)."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_time", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(300))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))  # processed | error
    status_details: Mapped[str | None] = mapped_column(String(4000))
    meta: Mapped[dict | None] = mapped_column(JSON)  # e.g. {"examples": 120} for fine-tune files


class Job(Base):
    """A unit of background work (a fine-tune or an eval) in the durable queue. Workers claim
    jobs with a lease they renew by heartbeat; a job whose lease lapsed is claimed again and resumes."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_tenant_time", "tenant_id", "created_at"), Index("ix_jobs_status", "status"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(16))  # fine_tune
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    spec: Mapped[dict] = mapped_column(JSON)  # what was asked (model, files, hyperparameters, ...)
    state: Mapped[dict] = mapped_column(JSON, default=dict)  # progress: trained_tokens, step, estimated_finish
    result: Mapped[dict | None] = mapped_column(JSON)  # fine_tuned_model, result_files
    error: Mapped[dict | None] = mapped_column(JSON)  # {"code", "message", "param"}


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    level: Mapped[str] = mapped_column(String(8))  # info | warn | error
    type: Mapped[str] = mapped_column(String(8))  # message | metrics
    message: Mapped[str] = mapped_column(String(2000))
    data: Mapped[dict | None] = mapped_column(JSON)


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(40), index=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    step: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    metrics: Mapped[dict] = mapped_column(JSON)
    model_id: Mapped[str] = mapped_column(String(300))  # the servable ft:...:ckpt-step-N id


class TenantModel(Base):
    """A model a tenant owns (a fine-tune or one of its checkpoints): an adapter on a base model."""

    __tablename__ = "tenant_models"
    __table_args__ = (Index("ix_tenant_models_tenant", "tenant_id"),)

    id: Mapped[str] = mapped_column(String(300), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    base_model: Mapped[str] = mapped_column(String(300))
    job_id: Mapped[str] = mapped_column(String(40))
    step: Mapped[int | None] = mapped_column(Integer)
    adapter_path: Mapped[str] = mapped_column(String(1000))  # GGUF LoRA, relative to the artifact dir
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lineage: Mapped[dict] = mapped_column(JSON)  # base, job, step, checkpoint, evals


class EvalItem(Base):
    """One row of an eval run for one model: its input, reference, prediction and per-row scores."""

    __tablename__ = "eval_items"
    __table_args__ = (UniqueConstraint("job_id", "model", "idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(40))
    tenant_id: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(300))
    idx: Mapped[int] = mapped_column(Integer)  # the row's line in the file, from 0
    data: Mapped[dict] = mapped_column(JSON)


class StoredCompletion(Base):
    """A chat completion created with `store: true`: request and response, kept for the tenant's retention."""

    __tablename__ = "stored_completions"
    __table_args__ = (Index("ix_stored_completions_tenant_time", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the completion id (chatcmpl-...)
    tenant_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request: Mapped[dict] = mapped_column(JSON)  # messages and the sampling parameters that were set
    response: Mapped[dict] = mapped_column(JSON)  # the chat.completion object as returned
    metadata_: Mapped[dict | None] = mapped_column("metadata", JSON)


class CompletionFeedback(Base):
    """A rating (+1/-1) on a stored completion, with an optional corrected answer and comment."""

    __tablename__ = "completion_feedback"
    __table_args__ = (Index("ix_completion_feedback_completion", "completion_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    completion_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(40))
    rating: Mapped[int] = mapped_column(Integer)
    correction: Mapped[str | None] = mapped_column(Text)
    comment: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StoredResponse(Base):
    """A response of the Responses API (`store`, true by default): what it was asked, its input items (the
    whole conversation it continued) and its output items, kept for the tenant's stored-completion retention."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_tenant_time", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # resp_...
    tenant_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16))  # completed | incomplete | failed
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request: Mapped[dict] = mapped_column(JSON)  # the parameters a Response object echoes (tools, text, ...)
    input_items: Mapped[list] = mapped_column(JSON)  # earlier turns' items, then this request's input
    output: Mapped[list] = mapped_column(JSON)  # the output items as returned
    usage: Mapped[dict | None] = mapped_column(JSON)
    previous_response_id: Mapped[str | None] = mapped_column(String(64))
    metadata_: Mapped[dict | None] = mapped_column("metadata", JSON)
    error: Mapped[dict | None] = mapped_column(JSON)  # {code, message} of a failed response


class CatalogModel(Base):
    """A base model in the run-time catalog: where its weights are, what it can do, who sees it, and whether
    the server loads it at start. Whether it is loaded now is the serving process's state, not stored."""

    __tablename__ = "catalog_models"

    id: Mapped[str] = mapped_column(String(300), primary_key=True)  # the served model id
    source_type: Mapped[str] = mapped_column(String(16))  # package | gguf_path
    source: Mapped[str] = mapped_column(String(1000))  # a bundled model's spec, or the .gguf path
    description: Mapped[str] = mapped_column(Text, default="")
    context_length: Mapped[int | None] = mapped_column(Integer)  # per sequence; NULL: the server's setting
    max_seqs: Mapped[int | None] = mapped_column(Integer)  # sequence slots; NULL: the server's setting
    capabilities: Mapped[list] = mapped_column(JSON)
    tenants: Mapped[list | None] = mapped_column(JSON)  # tenant ids that may see it; NULL: every tenant
    load_at_start: Mapped[bool] = mapped_column(Boolean, default=False)
    # Deployment settings an admin changed (replicas, autoscaling, per-replica engine); the rest are defaults.
    deployment: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Batch(Base):
    """A batch (POST /v1/batches): its lines are in batch_lines. An API process's batch runner claims it with
    a lease it renews (lease_owner, lease_expires_at), as workers do jobs; another takes it over if that lapses."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_tenant_time", "tenant_id", "created_at"), Index("ix_batches_status", "status"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str | None] = mapped_column(String(40))  # whose limits and budget the lines run under
    endpoint: Mapped[str] = mapped_column(String(40))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    metadata_: Mapped[dict | None] = mapped_column("metadata", JSON)
    errors: Mapped[list | None] = mapped_column(JSON)  # batch-level errors: [{"code", "message", "param", "line"}]
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    total: Mapped[int] = mapped_column(Integer, default=0)  # lines, once validated
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BatchLine(Base):
    """One request of a batch. `state` goes pending -> done | failed once, in the transaction that also writes
    the line's usage record, so a resumed batch neither reruns nor bills a finished line."""

    __tablename__ = "batch_lines"

    batch_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)  # 1-based line number in the input file
    custom_id: Mapped[str | None] = mapped_column(String(512))
    state: Mapped[str] = mapped_column(String(8))  # pending | done | failed
    request: Mapped[dict | None] = mapped_column(JSON)  # the validated body; None for a line that failed validation
    response: Mapped[dict | None] = mapped_column(JSON)  # {"status_code", "request_id", "body"}
    error: Mapped[dict | None] = mapped_column(JSON)  # {"code", "message", "param", "line"}
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConsoleSession(Base):
    """A web console sign-in: the cookie holds a random token, this row its hash, the key it speaks for and the
    CSRF token its forms carry."""

    __tablename__ = "console_sessions"
    __table_args__ = (Index("ix_console_sessions_key", "key_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
