"""The durable job queue, and the fine-tuning jobs and evals that run on it."""
