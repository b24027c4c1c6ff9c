"""Fine-tuning and eval workers as Ray actors: each asks Ray for CPUs (or a GPU) and runs the same job loop as
`llmaas worker`, so jobs spread over the cluster's nodes. They take jobs from the shared database, as any
`llmaas worker` started by hand does; both can run side by side."""

from __future__ import annotations

import logging
from typing import Any

import ray


@ray.remote(max_restarts=-1)  # a worker that dies is restarted; its job is resumed once its lease lapses
class JobWorker:
    def __init__(self, settings: dict[str, Any]) -> None:
        from llmaas.core.config import load_settings

        self.settings = load_settings(**settings)
        logging.basicConfig(level=self.settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def run(self) -> None:
        from llmaas.workers.jobs import HANDLERS
        from llmaas.workers.worker import Worker

        Worker(self.settings, HANDLERS).run()


def start_workers(settings: dict[str, Any], n: int, *, num_cpus: float = 1, num_gpus: float = 0) -> list[Any]:
    """Start `n` job workers; each holds `num_cpus` (and `num_gpus`) while it lives."""
    actors = [JobWorker.options(name=f"llmaas-worker-{i}", num_cpus=num_cpus, num_gpus=num_gpus,
                                get_if_exists=True).remote(settings) for i in range(n)]
    for a in actors:
        a.run.remote()
    return actors
