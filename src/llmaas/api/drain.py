"""A clean stop: on SIGTERM the server keeps its socket open but refuses new work with 503 + Retry-After (and
/ready turns 503, so a load balancer takes it out), lets the requests it accepted finish up to a drain deadline,
and only then shuts down: the batch runner hands its batch back and metering is flushed in the lifespan's end.

uvicorn's own SIGTERM handling closes the listening socket at once and cancels what is still running after
`timeout_graceful_shutdown`: a client mid-stream loses its answer, and one arriving meanwhile gets a connection
refused it cannot tell from a crash."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from llmaas.core.errors import error_body

log = logging.getLogger("llmaas.api")
# Not work, and answered while draining: probes and scrapes must keep working until the process exits.
OPEN_PATHS = ("/health", "/ready", "/metrics")
RETRY_AFTER_S = 5
# After the deadline: how long the requests cancelled then get to run their clean-up (metering what they produced).
CANCEL_GRACE_S = 5.0


class Drain:
    """The server's drain state and the requests in flight (probes aside)."""

    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time the drain began
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task] = set()  # the tasks serving the requests in flight

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        if self.since is None:
            self.since = time.monotonic()

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()
        if (task := asyncio.current_task()) is not None:
            self._tasks.add(task)

    def leave(self) -> None:
        self.inflight -= 1
        self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
        if self.inflight == 0:
            self._idle.set()

    def cancel_all(self) -> None:
        """Cancel the requests still in flight, while the event loop runs: each unwinds through its own clean-up
        (a stream meters what it produced), which a task cancelled by uvicorn's shutdown may not get to do."""
        for task in self._tasks:
            task.cancel()

    async def idle(self, timeout_s: float) -> bool:
        """Until nothing is in flight (True) or `timeout_s` passed (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False


class DrainMiddleware:
    """Counts the requests in flight; while draining, answers new ones 503 with Retry-After in the OpenAI
    envelope (a client's retry goes to another instance, or to this one once restarted)."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            body = json.dumps(error_body("The server is shutting down and takes no new requests; retry in a few "
                                         "seconds.", "server_error", None, "server_shutting_down")).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER_S).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.leave()


class DrainingServer(uvicorn.Server):
    """uvicorn, with the first SIGTERM/SIGINT starting a drain of up to `drain_s` before the usual shutdown;
    a second signal stops at once, as uvicorn does."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_s: float) -> None:
        super().__init__(config)
        self.drain, self.drain_s = drain, drain_s
        self._task: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.drain.draining or self.drain_s <= 0:
            super().handle_exit(sig, frame)
            return
        self.drain.begin()
        log.info("stopping: draining %d request(s) in flight, for up to %g s (signal again to stop now)",
                 self.drain.inflight, self.drain_s)
        # A signal handler: start the drain from the event loop, not in the middle of whatever it interrupted.
        asyncio.get_event_loop().call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._drained())

    async def _drained(self) -> None:
        done = await self.drain.idle(self.drain_s)
        if not done:
            log.warning("drain deadline passed with %d request(s) still in flight: stopping them",
                        self.drain.inflight)
            self.drain.cancel_all()
            await self.drain.idle(CANCEL_GRACE_S)
        self.should_exit = True
