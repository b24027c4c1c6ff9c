"""The control plane: tenants, API keys and roles, rate limits, budgets, metering and usage, the audit log,
files, the durable job queue, fine-tuning jobs, evals and stored completions, in one database."""
