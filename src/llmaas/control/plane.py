"""The control plane of one process: database, keys, limits, budgets, catalog, meter and gateway,
opened from settings by the app's lifespan (or the CLI) and closed with it."""

from __future__ import annotations

import logging
import sys
import threading

from llmaas.control.admission import Admission
from llmaas.control.auth.keys import KeyService
from llmaas.control.auth.sessions import SessionStore
from llmaas.control.billing.budgets import Budgets
from llmaas.control.billing.catalog import Catalog
from llmaas.control.billing.metering import Meter
from llmaas.control.data.crypto import MasterKey
from llmaas.control.data.files import FileService
from llmaas.control.data.responses import ResponseStore
from llmaas.control.data.stored_completions import StoredCompletionService
from llmaas.control.db.database import Database
from llmaas.control.jobs.queue import JobQueue
from llmaas.control.limits.ratelimit import Limiter, MemoryLimiter
from llmaas.control.model_catalog import ModelCatalog
from llmaas.control.registry import ModelRegistry
from llmaas.core.config import Settings
from llmaas.core.metrics import ControlMetrics

log = logging.getLogger("llmaas.control")


class ControlPlane:
    def __init__(self, settings: Settings, metrics: ControlMetrics, *, limiter: Limiter | None = None) -> None:
        self.settings = settings
        self.db = Database(settings.resolved_database_url())
        self.keys = KeyService(self.db, cache_ttl_s=settings.key_cache_ttl_s,
                               failures_per_minute=settings.auth_failures_per_minute)
        self.budgets = Budgets(self.db)
        self.catalog = Catalog(self.db, (settings.default_input_usd_per_mtok, settings.default_output_usd_per_mtok,
                                         settings.default_training_usd_per_mtok))
        self.meter = Meter(self.db, self.budgets, interval_s=settings.usage_flush_interval_s,
                           last_used=self.keys.pop_last_used, periodic=self._periodic)
        self.limiter: Limiter = limiter or MemoryLimiter()
        self.admission = Admission(self.limiter, self.budgets, self.meter, self.catalog, metrics)
        self.files = FileService(self.db, MasterKey.load(settings.master_key, settings.master_key_file),
                                 settings.artifact_dir / "files", settings.max_file_bytes)
        self.jobs = JobQueue(self.db, settings.job_lease_s)
        self.registry = ModelRegistry(self.db, settings.artifact_dir)
        self.models = ModelCatalog(self.db)
        self.stored = StoredCompletionService(self.db, settings.store_retention_days)
        self.responses = ResponseStore(self.db, settings.store_retention_days)  # the same retention
        self.sessions = SessionStore(self.db, settings.console_session_s)
        self.admin_secret: str | None = None
        self._stop = threading.Event()
        self._purger: threading.Thread | None = None

    def _periodic(self) -> None:
        """Every few seconds in the meter's thread: prices other processes changed, budget grant leases."""
        self.catalog.reload()
        self.models.reload()
        self.budgets.grants.maintain()

    @classmethod
    async def open(cls, settings: Settings, metrics: ControlMetrics, models: list[str]) -> ControlPlane:
        """Migrate, bootstrap the admin key, seed prices, connect Redis, start the meter."""
        limiter: Limiter | None = None
        if settings.redis_url:
            from llmaas.control.limits.ratelimit_redis import RedisLimiter

            redis_limiter = RedisLimiter(settings.redis_url)
            await redis_limiter.ping()  # fail at start, not on the first request
            limiter = redis_limiter
        cp = cls(settings, metrics, limiter=limiter)
        cp.db.migrate()
        cp.admin_secret = cp.keys.bootstrap(settings.admin_key)
        if cp.admin_secret:
            banner = ("\n" + "=" * 72 + "\nllmaas: first start, created the platform admin key (shown only once):\n\n"
                      f"    {cp.admin_secret}\n\nKeep it safe. Create tenants and their keys with it "
                      "(POST /v1/admin/tenants) or with `llmaas admin`.\n" + "=" * 72 + "\n")
            print(banner, file=sys.stderr, flush=True)
        cp.catalog.ensure(models)
        cp.models.reload()
        cp.meter.start()
        cp._purger = threading.Thread(target=cp._purge_loop, name="llmaas-store-purge", daemon=True)
        cp._purger.start()
        log.info("control plane ready: database %s, limits %s", cp.db.engine.url.render_as_string(hide_password=True),
                 "redis" if settings.redis_url else "in-process")
        return cp

    def _purge_loop(self) -> None:
        """Delete expired stored completions and responses now and every `store_purge_interval_s`. Several
        API processes may each run this: the deletes are idempotent."""
        while True:
            for what, purge in (("stored completion", self.stored.purge_expired),
                                ("stored response", self.responses.purge_expired)):
                try:
                    n = purge()
                    log.log(logging.INFO if n else logging.DEBUG, "purged %d expired %s(s)", n, what)
                except Exception:  # a failed round (database busy or away) is retried next round
                    log.exception("purging expired %ss failed", what)
            if self._stop.wait(self.settings.store_purge_interval_s):
                return

    async def close(self) -> None:
        self._stop.set()
        if self._purger is not None:
            self._purger.join(timeout=10)
        self.meter.close()
        try:
            self.budgets.grants.close()  # after the meter: every settlement is written
        except Exception:  # the leases run out and another process returns them
            log.exception("giving back budget grants failed")
        await self.limiter.close()
        self.db.close()
