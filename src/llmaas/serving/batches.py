"""The batch runner: runs the lines of /v1/batches batches through the same serving handlers as HTTP, in the
API process that holds the engines (no second copy of a model).

Each API process runs one `BatchRunner` (started by the app's lifespan when the control plane is on). It
claims one batch at a time with a lease (control/jobs/batches.py BatchStore), validates its input file line
by line with the live request models, then runs the pending lines, a few at a time, as the batch's key:
admission, limits, budget reservation and metering are the live path's. Two things differ for a line:

- its sequences have engine priority 1, so interactive traffic goes first and lines run in the capacity it
  leaves (engine/priority.py: interactive requests preempt lines, and lines sit out the steps while
  interactive requests run);
- its ticket is priced at the catalog's batch price, and its usage is written with the line's result in one
  transaction (Meter.write_with + BatchStore.finish_line), so a runner that dies mid-batch leaves every line
  either finished and billed, or pending and unbilled: the next claim runs exactly the pending ones.

Cancelling (status cancelling) or expiry stops the runner from starting new lines; the lines in flight finish
and are kept; then the output and error files are written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import uuid
from collections.abc import Callable
from datetime import datetime

from llmaas.control.billing.metering import UsageEvent
from llmaas.control.clock import aware, utcnow
from llmaas.control.db.models import Batch
from llmaas.control.jobs.batches import BatchStore, LineTaken
from llmaas.control.plane import ControlPlane
from llmaas.core.config import Settings
from llmaas.core.errors import LlmaasError, OverloadedError, RateLimitError, error_body
from llmaas.protocol.batches import MAX_BATCH_LINES, count_lines, parse_lines, request_of
from llmaas.serving.chat import ServingChat
from llmaas.serving.completions import ServingCompletion
from llmaas.serving.embeddings import ServingEmbedding
from llmaas.serving.models import AnyTicket, ServedModels

log = logging.getLogger("llmaas.batches")

BATCH_PRIORITY = 1  # GenerationRequest.priority of batch lines: after every interactive request
_PAGE = 256  # pending lines read per query
_WATCH_S = 1.0  # how often the runner renews its lease and reads the status (cancel stops within this)
_MAX_RETRIES = 30  # a line refused for load (429 rate limit, 503) is retried this often before it fails


class _LineModels(ServedModels):
    """The served models as a batch line sees them: its ticket is batch-priced and hands its usage to `sink`."""

    def __init__(self, base: ServedModels, sink: Callable[[UsageEvent], None]) -> None:
        super().__init__(base.engines, base.control, base.loader)
        self._sink = sink

    async def open_ticket(self, principal, model: str, endpoint: str, request_id: str) -> AnyTicket:
        assert self.control is not None  # the runner runs only with a control plane
        ticket = await self.control.admission.open(principal, model, endpoint, request_id, batch=True)
        ticket.on_usage = self._sink
        return ticket


class BatchRunner:
    def __init__(self, served: ServedModels, control: ControlPlane, settings: Settings) -> None:
        self.served, self.cp = served, control
        self.store = BatchStore(control.db, control.files, settings.job_lease_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.poll_s, self.concurrency = settings.batch_poll_s, settings.batch_concurrency
        self._task: asyncio.Task | None = None
        self._current: str | None = None
        self._status: str | None = None  # of the batch being run, as the last watch read it

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="llmaas-batch-runner")

    async def close(self) -> None:
        """Stop; a batch in progress is handed back (its lines in flight are not recorded, so they run again)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._current is not None:
            await asyncio.to_thread(self.store.release, self._current, self.owner)
            self._current = None

    async def _loop(self) -> None:
        while True:
            try:
                batch = await asyncio.to_thread(self.store.claim, self.owner)
            except Exception:  # database away: try again later
                log.exception("claiming a batch failed")
                batch = None
            if batch is None:
                await asyncio.sleep(self.poll_s)
                continue
            self._current = batch.id
            try:
                await self._process(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # its lease lapses and a runner retries it
                log.exception("batch %s failed in the runner", batch.id)
                await asyncio.sleep(self.poll_s)
            self._current = None

    async def _process(self, batch: Batch) -> None:
        if batch.status == "validating" and not await self._validate(batch):
            return
        self._status = await asyncio.to_thread(self.store.heartbeat, batch.id, self.owner)
        if self._status == "in_progress":
            watch = asyncio.create_task(self._watch(batch.id))
            try:
                await self._run_lines(batch)
            finally:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
            self._status = await asyncio.to_thread(self.store.heartbeat, batch.id, self.owner)
        await self._finish(batch)

    async def _finish(self, batch: Batch) -> None:
        status, bid = self._status, batch.id
        if status is None:  # the lease went to another runner
            return
        if status == "cancelling":
            await asyncio.to_thread(self.store.finalize, bid, self.owner, "cancelled")
        elif _expired(batch):
            await asyncio.to_thread(self.store.fail_pending, bid, "batch_expired",
                                    "This line was not run before the batch expired.")
            await asyncio.to_thread(self.store.finalize, bid, self.owner, "expired")
        elif not await asyncio.to_thread(self.store.pending, bid, 0, 1):
            if status != "finalizing":
                await asyncio.to_thread(self.store.set_status, bid, self.owner, "finalizing")
            await asyncio.to_thread(self.store.finalize, bid, self.owner, "completed")
        else:  # lines left after several passes (the database failed their writes): hand back, retried later
            await asyncio.to_thread(self.store.release, bid, self.owner)

    async def _validate(self, batch: Batch) -> bool:
        """Check every line of the input file and record them; False if the batch cannot start."""
        try:
            data = await asyncio.to_thread(self.cp.files.read_all, batch.tenant_id, batch.input_file_id)
        except LlmaasError:
            return await self._fail(batch, "invalid_file", f"The input file {batch.input_file_id} no longer exists.")
        n = await asyncio.to_thread(count_lines, data)
        if n > MAX_BATCH_LINES:
            return await self._fail(batch, "too_many_lines", f"The input file has {n} requests; a batch holds at "
                                    f"most {MAX_BATCH_LINES}. Split it into several batches.")
        lines = await asyncio.to_thread(parse_lines, data, batch.endpoint)
        if not lines:
            return await self._fail(batch, "empty_file", "The input file has no lines.")
        return await asyncio.to_thread(self.store.store_lines, batch.id, self.owner, lines)

    async def _fail(self, batch: Batch, code: str, message: str) -> bool:
        err = [{"code": code, "message": message, "param": "input_file_id", "line": None}]
        await asyncio.to_thread(self.store.set_status, batch.id, self.owner, "failed", errors=err)
        return False

    async def _watch(self, batch_id: str) -> None:
        """Renew the lease and follow the status (a cancel) while lines run."""
        while True:
            await asyncio.sleep(_WATCH_S)
            try:
                self._status = await asyncio.to_thread(self.store.heartbeat, batch_id, self.owner)
            except Exception:  # one missed beat; the lease outlives several
                log.exception("batch heartbeat failed")

    def _stopping(self, batch: Batch) -> bool:
        return self._status != "in_progress" or _expired(batch)

    def _slots(self) -> int:
        """Lines in flight: the model's slots and a quarter more, so a slot a line leaves finds the next line
        already waiting in the engine (waiting lines never delay interactive requests: engine/priority.py)."""
        if self.concurrency:
            return self.concurrency
        slots = max((e.info.n_slots for e in self.served.engines.values()), default=4)
        return slots + max(1, slots // 4)

    async def _run_lines(self, batch: Batch) -> None:
        principal = None
        if batch.key_id is not None:
            principal = await asyncio.to_thread(self.cp.keys.principal_of, batch.key_id)
        if principal is None:  # the key was revoked (or the tenant disabled) since the batch was created
            await asyncio.to_thread(self.store.fail_pending, batch.id, "invalid_api_key",
                                    "The API key that created this batch is no longer active.")
            return
        sem = asyncio.Semaphore(self._slots())
        tasks: set[asyncio.Task] = set()
        for _ in range(3):  # a line whose result could not be written stays pending: another pass retries it
            after = 0
            while not self._stopping(batch):
                rows = await asyncio.to_thread(self.store.pending, batch.id, after, _PAGE)
                if not rows:
                    break
                for line, _custom_id, body in rows:
                    await sem.acquire()
                    if self._stopping(batch):
                        sem.release()
                        break
                    t = asyncio.create_task(self._line(batch, principal, line, body))
                    tasks.add(t)
                    t.add_done_callback(lambda t: (tasks.discard(t), sem.release()))
                    after = line
            await asyncio.gather(*tasks, return_exceptions=True)  # lines in flight finish, even on cancel
            if self._stopping(batch) or not await asyncio.to_thread(self.store.pending, batch.id, 0, 1):
                return

    async def _line(self, batch: Batch, principal, line: int, body: dict) -> None:
        """Run one line as its request would run live, and record its result with its usage."""
        rid = "req_" + uuid.uuid4().hex
        events: list[UsageEvent] = []
        models = _LineModels(self.served, events.append)
        req = request_of(batch.endpoint, body)
        for attempt in range(_MAX_RETRIES + 1):
            try:
                if batch.endpoint == "/v1/chat/completions":
                    served = await ServingChat(models).create(req, principal, rid, priority=BATCH_PRIORITY)
                elif batch.endpoint == "/v1/completions":
                    served = await ServingCompletion(models).create(req, principal, rid, priority=BATCH_PRIORITY)
                else:  # embeddings run beside the scheduler, not in its slots
                    served = await ServingEmbedding(models).create(req, principal, rid)
                response = {"status_code": 200, "request_id": rid, "body": served.body}
                break
            except (RateLimitError, OverloadedError) as e:
                # Load, not the line's fault: wait and retry (a budget refusal is final: it will not pass later).
                if e.code == "insufficient_quota" or attempt == _MAX_RETRIES or self._stopping(batch):
                    response = {"status_code": e.status_code, "request_id": rid, "body": e.to_dict()}
                    break
                await asyncio.sleep(min(5.0, float(e.headers.get("Retry-After", 1) or 1)))
            except LlmaasError as e:
                response = {"status_code": e.status_code, "request_id": rid, "body": e.to_dict()}
                break
            except Exception:
                log.exception("batch %s line %d failed", batch.id, line)
                response = {"status_code": 500, "request_id": rid, "body": error_body(
                    "The server had an error while processing your request.", "server_error")}
                break
        mark = self.store.finish_line(batch.id, line, response=response, error=None)
        try:
            await asyncio.to_thread(self.cp.meter.write_with, events, mark)
        except LineTaken:  # another runner finished it first (our lease had lapsed): nothing recorded twice
            log.warning("batch %s line %d was finished by another runner", batch.id, line)
        except Exception:  # left pending and unbilled: run again on the next pass
            log.exception("recording batch %s line %d failed", batch.id, line)


def _expired(batch: Batch) -> bool:
    expires: datetime | None = aware(batch.expires_at)
    return expires is not None and utcnow() >= expires
