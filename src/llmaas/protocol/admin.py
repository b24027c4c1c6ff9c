"""Wire schemas of the admin API (tenants, keys, limits, prices). Unknown fields are refused (400
naming the field) so that a typo in a limit never silently leaves a tenant unlimited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmaas.protocol.common import MAX_DAYS, Int32, Metadata, UnixTime


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitsIn(_Strict):
    # Stored in 32-bit integer columns: anything larger is refused here rather than by the database.
    rpm: Int32 | None = Field(default=None, description="Requests per minute")
    tpm: Int32 | None = Field(default=None, description="Tokens per minute (prompt + max completion)")
    max_parallel: Int32 | None = Field(default=None, description="Requests in flight at once")
    budget_usd: Decimal | None = Field(default=None, ge=0, description="Spend allowed per budget period")
    budget_period: Literal["daily", "weekly", "monthly"] | None = None
    budget_alert_fraction: float | None = Field(default=None, gt=0, le=1, description="Soft alert threshold")

    def changes(self) -> dict:
        """Only the fields the caller sent; an explicit null clears that limit."""
        return self.model_dump(exclude_unset=True)


RetentionDays = Annotated[int | None, Field(ge=1, le=MAX_DAYS,
                                           description="Days stored chat completions are kept; null: the default")]


class TenantCreate(_Strict):
    name: str = Field(min_length=1, max_length=200)
    limits: LimitsIn | None = None
    metadata: Metadata = None
    store_retention_days: RetentionDays = None


class TenantUpdate(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    disabled: bool | None = None
    limits: LimitsIn | None = None
    metadata: Metadata = None
    store_retention_days: RetentionDays = None  # an explicit null goes back to the platform default


class KeyCreate(_Strict):
    name: str = Field(default="", max_length=200)
    role: Literal["admin", "owner", "member", "reader"] = "member"
    models: list[str] | None = Field(default=None, description="Allowed model ids; null = all")
    expires_at: UnixTime | None = Field(default=None, description="Unix time")
    expires_in_days: float | None = Field(default=None, gt=0, le=MAX_DAYS)
    limits: LimitsIn | None = None

    def expiry(self) -> datetime | None:
        if self.expires_at is not None:
            return datetime.fromtimestamp(self.expires_at, UTC)
        if self.expires_in_days is not None:
            return datetime.now(UTC) + timedelta(days=self.expires_in_days)
        return None


class KeyUpdate(_Strict):
    name: str | None = Field(default=None, max_length=200)
    role: Literal["admin", "owner", "member", "reader"] | None = None
    models: list[str] | None = None
    limits: LimitsIn | None = None


class KeyRotate(_Strict):
    grace_seconds: int = Field(default=0, ge=0, le=7 * 86400,
                               description="Keep the old key working this long so clients can switch")


class PriceSet(_Strict):
    input_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    output_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    training_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    batch_discount: float | None = Field(default=None, ge=0, le=1,
                                         description="Fraction off input and output prices for batch lines")


Capability = Literal["chat", "completions", "embeddings", "fine_tuning"]
ModelId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-/]*$")]


class _ModelFields(_Strict):
    description: str | None = Field(default=None, max_length=2000)
    context_length: int | None = Field(default=None, ge=64, le=1 << 20,
                                       description="Tokens per sequence; default: the server's context_size")
    max_seqs: int | None = Field(default=None, ge=1, le=256,
                                 description="Sequences decoded together; default: the server's max_seqs")
    capabilities: list[Capability] | None = Field(default=None, max_length=4)
    tenants: list[Annotated[str, Field(max_length=40)]] | None = Field(
        default=None, max_length=10000, description="Tenant ids that may see the model; null: every tenant")
    load_at_start: bool | None = Field(default=None, description="Load it when the server starts")
    input_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    output_usd_per_mtok: Decimal | None = Field(default=None, ge=0)
    training_usd_per_mtok: Decimal | None = Field(default=None, ge=0)


class ModelRegister(_ModelFields):
    """Register a base model: exactly one of `package` (a bundled model: smollm2, gemma3-270m, ...) and
    `gguf_path` (a .gguf file on the server's disk)."""

    id: ModelId | None = Field(default=None, description="Served id; default: the bundled id or the file's name")
    package: str | None = Field(default=None, max_length=100)
    gguf_path: str | None = Field(default=None, max_length=1000)
    load: bool = Field(default=True, description="Start loading it now (in the background)")


class ModelUpdate(_ModelFields):
    pass


class DeploymentUpdate(_Strict):
    """Change a model's deployment (Ray mode). Names follow Ray Serve's autoscaling_config where it has one;
    `threads`, `max_seqs` and `max_adapters` are per replica (a change to them replaces the replicas, one at a
    time). Unset fields keep their value."""

    min_replicas: int | None = Field(default=None, ge=0, le=1024, description="0 lets the model scale to zero")
    max_replicas: int | None = Field(default=None, ge=1, le=1024)
    initial_replicas: int | None = Field(default=None, ge=0, le=1024)
    target_ongoing_requests: float | None = Field(
        default=None, gt=0, le=100000, description="Running + waiting sequences per replica the autoscaler aims for")
    upscale_delay_s: float | None = Field(default=None, ge=0, le=86400)
    downscale_delay_s: float | None = Field(default=None, ge=0, le=86400)
    downscale_to_zero_delay_s: float | None = Field(default=None, ge=0, le=86400,
                                                    description="Idle time before the last replica stops")
    threads: int | None = Field(default=None, ge=1, le=1024, description="CPU threads per replica")
    max_seqs: int | None = Field(default=None, ge=1, le=256, description="Sequence slots per replica")
    max_adapters: int | None = Field(default=None, ge=1, le=1024, description="LoRA adapters held per replica")

    def changes(self) -> dict:
        return self.model_dump(exclude_unset=True, exclude_none=True)
