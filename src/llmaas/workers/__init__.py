"""Background workers: claim jobs from the durable queue and run them (fine-tunes now; evals later).
Run as `llmaas worker`, or started and supervised by `llmaas serve` in embedded mode."""
