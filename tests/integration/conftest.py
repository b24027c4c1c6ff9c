"""Integration fixtures: a real `llmaas serve` process (real SmolLM2 via llama.cpp) on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

MODEL = "SmolLM2-135M-Instruct"
ADMIN_KEY = "sk-llmaas-integration-admin-key-0000000000"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tmp.mkdir(parents=True, exist_ok=True)
        self.log = tmp / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "llmaas.cli", "serve", "--port", str(self.port), "--data-dir",
               str(tmp / "data"), "--threads", "2", *args]
        self._logf = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "LLMAAS_ADMIN_KEY": ADMIN_KEY, **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=self._logf, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError("server did not become ready in 120 s")

    def client(self, api_key: str = ADMIN_KEY, **kw) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kw)

    def admin(self, method: str, path: str, **kw) -> dict:
        r = httpx.request(method, f"{self.url}/v1/admin{path}", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                          timeout=30, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._logf.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("llmaas"), "--max-seqs", "16", "--ctx-size", "2048")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server: LiveServer) -> OpenAI:
    return server.client()
