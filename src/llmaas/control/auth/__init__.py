"""API keys, tenants and their roles and limits (principals), and the append-only audit log."""
