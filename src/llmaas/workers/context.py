"""What a job handler is given (JobContext) and how it fails cleanly (JobFailed). Handlers and the worker
loop both import this module; the loop never imports a handler (they are registered in workers/jobs.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from llmaas.control.auth.principal import Limits
from llmaas.control.billing.budgets import Budgets, BudgetScope, Hold
from llmaas.control.billing.catalog import Catalog, Price
from llmaas.control.billing.metering import Meter
from llmaas.control.data.files import FileService
from llmaas.control.db.database import Database
from llmaas.control.db.models import ApiKey, CatalogModel, Job, Tenant
from llmaas.control.jobs.queue import JobQueue
from llmaas.core.config import Settings
from llmaas.core.errors import LlmaasError


class JobFailed(Exception):
    """A handler's clean failure: the job ends `failed` with this error (no traceback in the log)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def model_spec(db: Database, settings: Settings, model_id: str) -> str:
    """The model spec (bundled name or .gguf path) behind a base model id: its catalog entry's source, or
    the server's --model flag that serves it."""
    from llmaas.engine.factory import model_spec_for

    with db.session() as s:
        entry = s.get(CatalogModel, model_id)
        if entry is not None:
            return entry.source
    spec = model_spec_for(settings, model_id)
    if spec is not None:
        return spec
    raise JobFailed("model_not_available", f"Model {model_id} is not in this deployment's catalog.", "model")


@dataclass
class JobContext:
    """What a handler gets: the job, the services, and the flags the heartbeat thread maintains."""

    job: Job
    worker: str
    queue: JobQueue
    files: FileService
    budgets: Budgets
    catalog: Catalog
    meter: Meter
    settings: Settings
    cancel: threading.Event = field(default_factory=threading.Event)  # the user cancelled
    release: threading.Event = field(default_factory=threading.Event)  # stop and hand the job back
    state: dict = field(default_factory=dict)  # progress, written with each heartbeat
    done: threading.Event = field(default_factory=threading.Event)  # the handler returned

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.release.is_set()

    def event(self, message: str, **kw) -> None:
        self.queue.event(self.job.id, message, **kw)

    def reserve(self, model: str, prompt_tokens: int, completion_tokens: int, *,
                training: bool = False) -> tuple[list[Hold], Price]:
        """Reserve a worst-case cost on the tenant's and the job key's budgets before compute is spent;
        the meter settles it with the real usage. Over budget: the job fails with insufficient_quota."""
        job = self.job
        self.catalog.reload()
        with self.queue.db.session() as s:
            t = s.get(Tenant, job.tenant_id)
            k = s.get(ApiKey, job.key_id) if job.key_id else None
        scopes = [BudgetScope("tenant", job.tenant_id, Limits.of(t), job.tenant_id)]
        if k is not None:
            scopes.append(BudgetScope("key", k.id, Limits.of(k), job.tenant_id))
        try:
            return self.budgets.reserve(scopes, model, prompt_tokens, completion_tokens, self.catalog.price(model),
                                        training=training)
        except LlmaasError as e:
            raise JobFailed("insufficient_quota", e.message) from None


# A job kind's handler: runs the job to its end (or until ctx.should_stop()), raising JobFailed to fail it.
Handler = Callable[[JobContext], None]
