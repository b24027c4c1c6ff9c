#!/usr/bin/env python
"""Bounded, repeatable fuzz run of the llmaas HTTP API against a live `llmaas serve` it starts itself.

    python scripts/fuzz.py --backend fake                      # ~5 min: hostile inputs, then schemathesis
    python scripts/fuzz.py --backend llamacpp --time-budget 360 --report fuzz-llamacpp.json

Two phases, both checked with the same rules (tests/integration/test_fuzz_live.py runs a short one in the suite):

1. hostile: every JSON body field of the main routes (found in a valid baseline body per route, plus the
   top-level fields of the route's OpenAPI schema), every query parameter of the GET routes and every path
   parameter, each replaced by values from a list per type (empty/NUL/lone-surrogate/100 KB/RTL/format-string
   strings, 2**63 and 10**30 and NaN and 1e400 numbers, 10,000-item and 1000-deep lists and objects, null,
   wrong types). Bodies are sent as raw bytes, so invalid escapes and NaN/Infinity tokens reach the server.
   Also: whole-body junk, /v1/files multipart (hostile purpose, filename, content and structure), headers.
2. schemathesis (fuzzing/schema.py), positive and negative data: every operation of /openapi.json (the tenant
   routes with a member key, the /v1/admin routes with an admin key); the console's routes, signed in, from a
   spec built from its routers (/console is not in /openapi.json); then a stateful run of schemathesis's state
   machine along the spec's links (file -> fine-tuning job -> cancel, file -> eval, file -> batch).

A failure is a 5xx (a 503 with Retry-After is a legitimate refusal), an error without the OpenAI envelope
{"error": {"message", "type", "param", "code"}}, a connection error or timeout, a failed GET /health after a
case, or a failed chat probe (a real completion every --probe-every cases). Uvicorn's own plain-text
`400 Invalid HTTP request received.` (before the app sees the request) counts as `http_parser_rejections`.
In phase 2 an API response outside the schema the spec documents for its status, or with a status the operation
does not document, is a failure too. Exit code 1 on any failure.

Needs the `fuzz` extra: pip install -e '.[fuzz]' (schemathesis, httpx). The server runs with --workers 0, so
accepted fine-tuning and eval jobs stay queued instead of training on the CPUs the fuzzer shares.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

# `python scripts/fuzz.py` puts scripts/ on sys.path by itself, from any working directory; loading this file
# another way (runpy.run_path, importlib from a test) does not. The `fuzzing` package beside it must import either way.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzing.hostile import Case, build_hostile, check_baselines, run_hostile  # noqa: E402 - needs the line above
from fuzzing.schema import Coverage, run_console, run_schemathesis, run_stateful, spec_operations  # noqa: E402
from fuzzing.server import Run, Server, setup, short  # noqa: E402

# --------------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["fake", "llamacpp"], default="fake")
    ap.add_argument("--time-budget", type=float, default=300,
                    help="seconds for both phases, server start-up and setup not counted (default 300)")
    ap.add_argument("--max-examples", type=int, default=25,
                    help="schemathesis examples per operation and data mode (default 25)")
    ap.add_argument("--hostile-share", type=float, default=0.55,
                    help="part of the budget phase 1 may take; phase 2 gets the rest (default 0.55)")
    ap.add_argument("--probe-every", type=int, default=50, help="a real chat completion every N cases (default 50)")
    ap.add_argument("--request-timeout", type=float, default=120)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads of the server (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed (schemathesis phase)")
    ap.add_argument("--skip-hostile", action="store_true")
    ap.add_argument("--skip-schemathesis", action="store_true")
    ap.add_argument("--skip-console", action="store_true", help="leave the console's routes out of phase 2")
    ap.add_argument("--skip-stateful", action="store_true", help="leave the stateful (linked) run out of phase 2")
    ap.add_argument("--stateful-steps", type=int, default=6, help="most steps per stateful scenario (default 6)")
    ap.add_argument("--report", type=Path, help="write the JSON report here (and the server log next to it)")
    args = ap.parse_args()

    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="llmaas-fuzz-"))
    server = Server(args.backend, workdir, args.threads)

    def on_term(signum, frame):  # SIGTERM: unwind through the finally below like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    run: Run | None = None
    interrupted = False
    report: dict[str, Any] = {}
    cov = Coverage()
    try:
        print(f"starting llmaas serve --backend {args.backend} (log {server.log_path}) ...", flush=True)
        server.start()
        ctx = setup(server)
        start = time.monotonic()
        deadline = start + args.time_budget
        run = Run(server, ctx["member_key"], ctx["admin_key"], ctx["model"], deadline, args.probe_every,
                  args.request_timeout)
        spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
        cov.spec_operations = spec_operations(spec)
        hostile_cases: list[Case] = []
        next_case = 0
        baselines: dict[str, Any] = dict(ctx["baseline_status"])
        if not args.skip_hostile:
            hostile_cases = build_hostile(spec, ctx)
            baselines.update(check_baselines(run, hostile_cases))
            print(f"phase 1: {len(hostile_cases)} hostile cases (model {ctx['model']})", flush=True)
            hostile_deadline = deadline if args.skip_schemathesis else start + args.time_budget * args.hostile_share
            next_case = run_hostile(run, hostile_cases, hostile_deadline)
            run.probe("hostile")
        if not args.skip_schemathesis:
            now, left = time.monotonic(), deadline - time.monotonic()
            # fixed shares of the time left: tenant routes, admin routes, console, stateful
            shares = [0.4, 0.25, 0.0 if args.skip_console else 0.15, 0.0 if args.skip_stateful else 0.2]
            ends = [now + left * sum(shares[:i + 1]) / sum(shares) for i in range(4)]
            print(f"phase 2: schemathesis, {left:.0f} s left", flush=True)
            run_schemathesis(run, cov, "schemathesis_member", "member", False, args.max_examples, ends[0], args.seed)
            run.probe("schemathesis_member")
            run_schemathesis(run, cov, "schemathesis_admin", "admin", True, args.max_examples, ends[1],
                             args.seed + 10_000)
            run.probe("schemathesis_admin")
            if not args.skip_console:
                run_console(run, cov, "schemathesis_console", ctx["admin_key"], args.max_examples, ends[2],
                            args.seed + 20_000)
                run.probe("schemathesis_console")
            if not args.skip_stateful:
                run_stateful(run, cov, "schemathesis_stateful", ctx, deadline, args.seed + 30_000,
                             args.stateful_steps)
                run.probe("schemathesis_stateful")
            if next_case < len(hostile_cases) and not run.out_of_time():  # schemathesis left time over
                print(f"phase 1 again from case {next_case}, {deadline - time.monotonic():.0f} s left", flush=True)
                run_hostile(run, hostile_cases, deadline, next_case)
                run.probe("hostile")
        report["baseline_status"] = baselines
        report["hostile_cases_planned"] = len(hostile_cases)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted; stopping the server", file=sys.stderr)
    finally:
        server_alive_at_end = server.alive()
        server.stop()
        if args.report:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy(server.log_path, args.report.with_suffix(".server.log"))
        shutil.rmtree(workdir, ignore_errors=True)
    if run is None:
        return 1
    wall = time.monotonic() - t0
    groups = {name: {"cases": g.cases, "statuses": dict(sorted(g.statuses.items())), "failures": g.failures,
                     "http_parser_rejections": g.http_parser_rejections, "unsendable": g.unsendable,
                     "schema_conformance_violations": g.schema_conformance_violations,
                     "undocumented_status": g.undocumented_status,
                     "schemathesis_not_a_server_error": g.st_not_a_server_error,
                     "generation_errors": g.generation_errors, "no_data_for_mode": g.no_data_for_mode,
                     "skipped_out_of_time": g.skipped_out_of_time}
              for name, g in run.groups.items()}
    statuses: collections.Counter = collections.Counter()
    for g in run.groups.values():
        statuses.update(g.statuses)
    distinct = sorted(run.distinct.values(), key=lambda d: -d["count"])
    report.update({
        "backend": args.backend, "model": run.model, "time_budget_s": args.time_budget,
        "max_examples": args.max_examples, "seed": args.seed, "interrupted": interrupted,
        "cases": sum(g.cases for g in run.groups.values()), "groups": groups,
        "statuses": dict(sorted(statuses.items())), "failures_total": run.failure_count,
        "distinct_failures": [{k: d[k] for k in ("count", "group", "method", "route", "status", "reason", "inputs",
                                                 "body", "exception", "where", "server_log")}
                              for d in distinct],
        "failures": run.failures, "chat_probes_ok": run.probes_ok, "chat_probes_failed": run.probes_failed,
        "health_checks_failed": run.health_failed, "server_restarts": server.restarts,
        "server_alive_at_end": server_alive_at_end,
        "http_parser_rejections": sum(g.http_parser_rejections for g in run.groups.values()),
        "schema_conformance": [{"method": k[0], "path": k[1], "status": k[2], "message": k[3], "count": n}
                               for k, n in run.conformance.most_common()],
        "undocumented_statuses": [{"method": k[0], "path": k[1], "status": k[2], "message": k[3], "count": n}
                                  for k, n in run.undocumented.most_common()],
        "schema_violations_total": sum(run.conformance.values()) + sum(run.undocumented.values()),
        "envelope_failures": sum(d["count"] for d in distinct if "envelope" in d["reason"]),
        "server_errors": sum(d["count"] for d in distinct if str(d["status"] or "").startswith("5")),
        **cov.report(),
        "wall_time_s": round(wall, 1),
    })
    print_summary(report)
    if args.report:
        args.report.write_text(json.dumps(report, indent=2, ensure_ascii=False))
        print(f"report: {args.report}  (server log: {args.report.with_suffix('.server.log')})")
    return 1 if run.failure_count or interrupted else 0


def print_summary(r: dict) -> None:
    print()
    print(f"{'group':<22}{'cases':>7}{'2xx':>7}{'4xx':>7}{'5xx':>6}{'fail':>6}{'parser':>8}{'unsend':>8}"
          f"{'schema!':>9}{'skipped':>9}")
    for name, g in r["groups"].items():
        st = g["statuses"]
        n2 = sum(v for k, v in st.items() if k.startswith("2"))
        n4 = sum(v for k, v in st.items() if k.startswith("4"))
        n5 = sum(v for k, v in st.items() if k.startswith("5"))
        print(f"{name:<22}{g['cases']:>7}{n2:>7}{n4:>7}{n5:>6}{g['failures']:>6}{g['http_parser_rejections']:>8}"
              f"{g['unsendable']:>8}{g['schema_conformance_violations']:>9}{g['skipped_out_of_time']:>9}")
    print(f"statuses: {r['statuses']}")
    st = r["stateful"]
    print(f"operations fuzzed: {r['operations_fuzzed']}/{r['operations_in_spec']} of /openapi.json, console "
          f"{r['console_operations_fuzzed']}/{r['console_operations']}; stateful: {st['scenarios']} scenarios, "
          f"{st['steps']} steps, {st['linked_steps']} linked ({st['linked_steps_2xx']} with every step 2xx)")
    if r["operations_not_fuzzed"]:
        print(f"not fuzzed: {', '.join(r['operations_not_fuzzed'])}")
    print(f"chat probes ok/failed: {r['chat_probes_ok']}/{r['chat_probes_failed']}   health failures: "
          f"{r['health_checks_failed']}   server restarts: {r['server_restarts']}   wall: {r['wall_time_s']} s")
    print(f"failures: {r['failures_total']} ({len(r['distinct_failures'])} distinct)")
    for d in r["distinct_failures"][:40]:
        print(f"  x{d['count']:<4} {d['method']} {d['route']} -> {d['status']} {d['reason']}; "
              f"e.g. {short(d['inputs'][0] if d['inputs'] else '', 100)}"
              + (f"\n         {d['exception'][:150]}" if d["exception"] else "")
              + (f"\n         at {d['where']}" if d["where"] else ""))


if __name__ == "__main__":
    sys.exit(main())
