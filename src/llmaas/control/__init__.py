"""Control plane (tenants, keys, limits, usage, files, jobs): arrives with issue 3."""
