"""The `llmaas` command line: `serve`, `worker`, `admin ...` (tenants, keys, limits, prices, audit) and
`eval ...` (run and compare evals against a server). The typer app is `llmaas.cli.main:app`."""
