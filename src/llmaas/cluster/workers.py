"""Fine-tuning and eval workers as Ray actors: each asks Ray for CPUs (or a GPU) and runs the same job loop as
`llmaas worker`, so jobs spread over the cluster's nodes. They take jobs from the shared database, as any
`llmaas worker` started by hand does; both can run side by side.

The ingress makes sure they exist when it starts (named, detached actors: however many ingress replicas start,
and wherever the Serve config was deployed from, the cluster has `workers` of them)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray

NAMESPACE = "llmaas"


@ray.remote(max_restarts=-1)  # a worker that dies is restarted; its job is resumed once its lease lapses
class JobWorker:
    def __init__(self, settings: dict[str, Any]) -> None:
        from llmaas.core.config import load_settings
        from llmaas.workers.jobs import HANDLERS
        from llmaas.workers.worker import Worker

        s = load_settings(**settings)
        logging.basicConfig(level=s.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # The loop runs on a thread of its own so that the actor answers `alive` while a job trains.
        self._thread = threading.Thread(target=Worker(s, HANDLERS).run, name="llmaas-worker", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()


def ensure_workers(settings: dict[str, Any], n: int, *, num_cpus: float = 1, num_gpus: float = 0) -> list[Any]:
    """`n` job workers in the cluster (created if missing), each holding `num_cpus` (and `num_gpus`)."""
    return [JobWorker.options(name=f"llmaas-worker-{i}", namespace=NAMESPACE, lifetime="detached",
                              get_if_exists=True, num_cpus=num_cpus, num_gpus=num_gpus).remote(settings)
            for i in range(n)]
