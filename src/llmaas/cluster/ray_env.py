"""What Ray mode needs before anything starts: Ray Serve installed, and state every node shares."""

from __future__ import annotations

import importlib.util

from llmaas.core.config import Settings

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
