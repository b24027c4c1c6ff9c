"""Background workers: claim jobs (fine-tunes, evals) from the durable queue and run them.
Run as `llmaas worker`, or started and supervised by `llmaas serve` in embedded mode."""
