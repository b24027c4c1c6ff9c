"""A CI-sized soak (bench/soak.py's core) on a real `llmaas serve` with small capacity, so that refusals really
happen: every refusal a 429/503 with Retry-After, no accepted stream refused for capacity afterwards, every accepted
stream terminated, every accepted request metered exactly once and no refused one metered at all, and nothing left
running, waiting or open."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import print_report, soak
from tests.integration.conftest import ADMIN_KEY, LiveServer

pytestmark = pytest.mark.integration


def test_streaming_clients_over_capacity_are_refused_cleanly_and_every_accepted_stream_is_metered(tmp_path: Path):
    # 4 slots + 8 queued against 60 clients: most requests find the server full.
    s = LiveServer(tmp_path, "--workers", "0", "--max-seqs", "4", "--max-queued", "8", "--ctx-size", "1024")
    db = tmp_path / "data" / "llmaas.db"  # SQLite unless the environment points the server elsewhere
    try:
        res = soak(s.url, ADMIN_KEY, s.proc.pid, clients=60, duration=15, warmup=3, drain=20,
                   disconnect_frac=0.1, tokens=(8, 48), seed=7, db=db if db.exists() else None)
    finally:
        s.stop()
    print_report(res)  # shown with -s
    report = "\n".join(c.line() for c in res["checks"])
    report += f"\nsamples: {res['total'].samples}\nserver log tail:\n{s.log.read_text()[-3000:]}"
    total = res["total"]
    assert total.accepted > 0, report
    assert total.refusals[503] > 0, report  # the capacity is really exceeded
    assert all(c.ok for c in res["checks"]), report
