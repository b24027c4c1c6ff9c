"""The job kinds a worker runs, each with its handler: the one place that ties the worker loop to them."""

from __future__ import annotations

from llmaas.workers.context import Handler
from llmaas.workers.evaluate import run_eval
from llmaas.workers.fine_tune import run_fine_tune

HANDLERS: dict[str, Handler] = {"fine_tune": run_fine_tune, "eval": run_eval}
