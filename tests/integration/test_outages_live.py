"""PostgreSQL and Redis going away under load, on a live `llmaas serve` (fake backend: this is about the
control plane). Each is reached through a TCP relay the test cuts for a while, which the server sees as the
service being down: connections reset, new ones refused. Requests meanwhile get a 503 with Retry-After (or
succeed), never a 500; when the service is back, requests succeed again and the usage records catch up with
every request that succeeded, none lost and none twice."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.integration.conftest import ADMIN_KEY, LiveServer

pytestmark = pytest.mark.integration
FAKE = "fake-model"


class Relay:
    """A TCP relay to host:port that can be cut (every connection reset, new ones refused) and restored."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.up = True
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self._srv.accept()
            except OSError:
                return
            if not self.up:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                c.close()  # RST: as a refused connection
                continue
            try:
                u = socket.create_connection(self.target, timeout=5)
            except OSError:
                c.close()
                continue
            with self._lock:
                self._conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.close()

    def cut(self) -> None:
        self.up = False
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self._srv.close()


def _via(url: str, relay: Relay) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{relay.port}"))


def _target(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _load(s: LiveServer, key: str, seconds: float, during: callable) -> list[httpx.Response]:
    """4 clients sending chats (every other one streamed) for `seconds`, with `during()` run meanwhile."""
    stop = time.monotonic() + seconds
    out: list[httpx.Response] = []

    def client() -> None:
        with httpx.Client(base_url=s.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            i = 0
            while time.monotonic() < stop:
                body = {"model": FAKE, "max_tokens": 4, "stream": bool(i % 2),
                        "messages": [{"role": "user", "content": "hello"}]}
                r = c.post("/v1/chat/completions", json=body)
                r.read()
                out.append(r)
                i += 1
                time.sleep(0.05)

    with ThreadPoolExecutor(5) as pool:
        clients = [pool.submit(client) for _ in range(4)]
        pool.submit(during).result()
        for f in clients:
            f.result()
    return out


def _cut(relay: Relay, *, after_s: float, for_s: float) -> None:
    time.sleep(after_s)
    relay.cut()
    time.sleep(for_s)
    relay.restore()


def _tenant_key(s: LiveServer, **limits: int) -> str:
    tenant = s.admin("POST", "/tenants", json={"name": "outage", "limits": limits})["id"]
    return s.admin("POST", f"/tenants/{tenant}/keys", json={"name": "k", "role": "member"})["key"]


def _ok_records(s: LiveServer, key: str) -> int:
    r = httpx.get(f"{s.url}/v1/usage", params={"group_by": "status"}, headers={"Authorization": f"Bearer {key}"},
                  timeout=30).json()
    return sum(row["requests"] for row in r["data"] if row.get("status") == "ok")


def _check(responses: list[httpx.Response], code: str) -> Counter:
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses  # never a 500, never a hang
    for r in responses:
        if r.status_code == 503:
            assert r.headers.get("retry-after"), r.text
            assert r.json()["error"]["code"] in (code, "server_overloaded"), r.text
        else:
            assert "error" not in r.text, r.text[:300]  # a stream that began 200 ran to its end
    return statuses


def test_postgres_down_for_10_s_under_load(tmp_path, pg_url):
    relay = Relay(*_target(pg_url, 5432))
    s = LiveServer(tmp_path, "--backend", "fake", env={"LLMAAS_DATABASE_URL": _via(pg_url, relay),
                                                       "LLMAAS_KEY_CACHE_TTL_S": "1"})
    try:
        key = _tenant_key(s)

        responses = _load(s, key, 18, lambda: _cut(relay, after_s=2, for_s=10))
        statuses = _check(responses, "database_unavailable")
        assert statuses[503] > 0 and statuses[200] > 0, statuses  # the outage was felt, and lived through
        assert all(r.status_code == 200 for r in responses[-8:])  # back once the database is
        deadline = time.monotonic() + 30
        while _ok_records(s, key) != statuses[200] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _ok_records(s, key) == statuses[200]  # metering caught up: every success once
    finally:
        s.stop()
        relay.close()


def test_redis_down_fails_closed_with_503_and_recovers(tmp_path):
    import os

    url = os.environ.get("LLMAAS_TEST_REDIS_URL")
    if not url:
        pytest.skip("LLMAAS_TEST_REDIS_URL is not set (CI sets it)")
    relay = Relay(*_target(url, 6379))
    s = LiveServer(tmp_path, "--backend", "fake", env={"LLMAAS_REDIS_URL": _via(url, relay)})
    try:
        key = _tenant_key(s, rpm=1_000_000)  # limited: every request takes a place in Redis

        responses = _load(s, key, 12, lambda: _cut(relay, after_s=2, for_s=5))
        statuses = _check(responses, "rate_limiter_unavailable")
        assert statuses[503] > 0 and statuses[200] > 0, statuses
        assert all(r.status_code == 200 for r in responses[-8:])
        r = httpx.get(f"{s.url}/v1/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
        assert r.status_code == 200
    finally:
        s.stop()
        relay.close()
