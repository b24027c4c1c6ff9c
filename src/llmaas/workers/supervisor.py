"""Embedded mode: `llmaas serve` runs its workers as child processes and restarts any that dies
(a killed worker's job is resumed from its checkpoint by the restarted one once its lease lapses)."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from llmaas.core.config import Settings

log = logging.getLogger("llmaas.supervisor")

# Settings a worker must share with the server that started it.
_SHARED = ("data_dir", "database_url", "models", "threads", "master_key", "max_file_bytes", "job_lease_s",
           "default_input_usd_per_mtok", "default_output_usd_per_mtok", "default_training_usd_per_mtok",
           "log_level", "context_size", "gpu_layers", "repack", "checkpoint_every", "backend")


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name in _SHARED:
        value = getattr(settings, name)
        if value is None:
            continue
        env[f"LLMAAS_{name.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return env


def _child_setup(nice: int) -> None:
    """In the child, before exec: get SIGTERM when the server dies, however it dies (Linux), so no worker
    outlives its server (the job it held is handed back or resumed by the next worker); and lower its CPU
    priority, so training and eval threads yield the cores to the serving threads whenever both want them."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if nice:
        os.nice(nice)


class WorkerSupervisor:
    def __init__(self, settings: Settings, count: int) -> None:
        self.settings, self.count = settings, count
        self.procs: list[subprocess.Popen] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "llmaas.cli", "worker"]
        nice = self.settings.worker_nice
        p = subprocess.Popen(cmd, env=worker_env(self.settings), preexec_fn=functools.partial(_child_setup, nice))
        log.info("started worker process %d (nice %d)", p.pid, nice)
        return p

    def start(self) -> None:
        if self.count <= 0:
            return
        self.procs = [self._spawn() for _ in range(self.count)]
        self._thread = threading.Thread(target=self._watch, name="llmaas-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for i, p in enumerate(self.procs):
                code = p.poll()
                if code is not None and not self._stopping.is_set():
                    log.warning("worker process %d exited with %s; restarting it", p.pid, code)
                    time.sleep(0.5)
                    self.procs[i] = self._spawn()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: running jobs stop at their next step and are handed back; then wait, then kill."""
        self._stopping.set()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
