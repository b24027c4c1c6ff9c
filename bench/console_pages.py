"""Console page loads with a tenant that has history: each page's server time with 10,000 usage records and 1,000
stored completions (with feedback on a tenth of them), against the target p95 <= 100 ms.

One `llmaas serve --backend fake --workers 0` (the pages' cost is the control plane's queries and the templates,
not the model), the data written straight into its database (SQLite by default, the embedded mode; `--database-url`
for PostgreSQL), an owner key signed in through the sign-in form. Each page is fetched `--requests` times in turn
(round robin over the pages, so that drift hits every page alike) on one keep-alive connection; the time is the
client's, on 127.0.0.1 (the server's time plus well under a millisecond). Prints p50/p95 per page; writes
bench/results/console_pages.json.

    .venv/bin/python bench/console_pages.py                 # SQLite, 50 requests per page
    .venv/bin/python bench/console_pages.py --database-url postgresql://postgres@127.0.0.1:5432/bench_console
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from finetune_quality import ADMIN_KEY, start_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PAGES = ["playground", "models", "files", "fine-tuning", "evals", "feedback", "batches", "usage", "usage.json",
         "usage/by-model", "keys"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(database_url: str, tenant: str, key_id: str, usage_rows: int, completions: int) -> None:
    """History as metering and `store: true` write it, over the last 30 days."""
    sys.path.insert(0, str(ROOT / "src"))
    from llmaas.control.db.database import Database
    from llmaas.control.db.models import CompletionFeedback, StoredCompletion, UsageRecord

    rng, now = random.Random(0), datetime.now(UTC)
    db = Database(database_url)
    with db.session() as s:
        for i in range(usage_rows):
            at = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
            p, c = rng.randint(20, 800), rng.randint(1, 256)
            s.add(UsageRecord(request_id=f"req_bench{i}", tenant_id=tenant, key_id=key_id,
                              model=rng.choice(["fake-model", "ft:fake-model:t:a:b"]), endpoint="chat.completions",
                              prompt_tokens=p, completion_tokens=c, cached_tokens=0, cost_pico=(p + 2 * c) * 100_000,
                              latency_ms=rng.uniform(50, 900), status="ok", created_at=at, day=at.date().isoformat()))
        for i in range(completions):
            at = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
            cid = f"chatcmpl-bench{i:05d}"
            question = f"Question {i}: " + " ".join(rng.choice(["how", "why", "what", "tokens", "model"])
                                                    for _ in range(30))
            s.add(StoredCompletion(id=cid, tenant_id=tenant, key_id=key_id, model="fake-model", created_at=at,
                                   request={"messages": [{"role": "user", "content": question}]},
                                   response={"id": cid, "object": "chat.completion", "model": "fake-model",
                                             "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                                 "role": "assistant", "content": "An answer. " * 20}}]},
                                   metadata_={}))
            if i % 10 == 0:
                s.add(CompletionFeedback(id=f"fb-bench{i}", tenant_id=tenant, completion_id=cid, key_id=key_id,
                                         rating=rng.choice([1, -1]), correction=None, comment=None, created_at=at))
    db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=50, help="fetches per page [50]")
    ap.add_argument("--usage-rows", type=int, default=10_000)
    ap.add_argument("--completions", type=int, default=1_000)
    ap.add_argument("--database-url", default=None, help="default: the server's own SQLite file")
    a = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="llmaas-bench-console-"))
    env = {"PYTHONPATH": str(ROOT / "src"), **({"LLMAAS_DATABASE_URL": a.database_url} if a.database_url else {})}
    proc, url = start_server(data, free_port(), None, env, ("--backend", "fake", "--workers", "0"), cwd=ROOT)
    try:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        tenant = httpx.post(f"{url}/v1/admin/tenants", headers=admin, json={"name": "history"}).json()["id"]
        key = httpx.post(f"{url}/v1/admin/tenants/{tenant}/keys", headers=admin,
                         json={"role": "owner", "name": "owner"}).json()
        t0 = time.monotonic()
        seed(a.database_url or f"sqlite:///{(data / 'llmaas.db').resolve()}", tenant, key["id"], a.usage_rows,
             a.completions)
        print(f"seeded {a.usage_rows} usage records and {a.completions} stored completions in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        c = httpx.Client(base_url=url, timeout=30)
        form = c.get("/console/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
        r = c.post("/console/login", data={"api_key": key["key"], "csrf": csrf})
        assert r.status_code in (200, 303) and "llmaas_session" in c.cookies, r.text
        for path in PAGES:  # warm-up, and every page must answer 200
            r = c.get(f"/console/{path}")
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
        times: dict[str, list[float]] = {p: [] for p in PAGES}
        for _ in range(a.requests):
            for path in PAGES:
                t = time.perf_counter()
                r = c.get(f"/console/{path}")
                times[path].append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200
        rows = {}
        print(f"{'page':<26}{'p50 ms':>9}{'p95 ms':>9}   target p95 <= 100 ms")
        for path, xs in times.items():
            xs.sort()
            p50, p95 = statistics.median(xs), xs[int(0.95 * (len(xs) - 1))]
            rows[path] = {"p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "met": p95 <= 100}
            print(f"{'/console/' + path:<26}{p50:>9.1f}{p95:>9.1f}   {'met' if p95 <= 100 else 'MISSED'}")
        out = {"database": "postgresql" if a.database_url else "sqlite", "usage_rows": a.usage_rows,
               "completions": a.completions, "requests_per_page": a.requests, "pages": rows}
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "console_pages.json").write_text(json.dumps(out, indent=2))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
