"""`python -m llmaas.cli ...`: the same as the `llmaas` command."""

from llmaas.cli.main import app

app()
