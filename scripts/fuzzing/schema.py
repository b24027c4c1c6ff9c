"""Phase 2: schemathesis over the server's /openapi.json (its Python API, 4.x), positive and negative data per
operation, each case sent, classified and checked for response-schema and status-code conformance (counted,
not failed)."""

from __future__ import annotations

import sys
import time
from typing import Any

from .server import Group, Run, short

CHECK_FAILED = (Exception, BaseExceptionGroup)  # schemathesis raises Failure or FailureGroup (an exception group)


def _make_case_runner(run: Run, g: Group, group: str, op: Any, mode: str, op_deadline: float, url: str,
                      session: Any, headers: dict):
    """The hypothesis test body for one (operation, data mode): send the case, classify, check conformance."""
    import requests
    from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

    def one(case) -> None:
        if time.monotonic() >= op_deadline:
            return
        off = run.server.log_size()
        method = op.method.upper()
        desc = short(f"{mode}: path={case.path_parameters} query={case.query} body={case.body!r}", 300)
        try:
            resp = case.call(base_url=url, session=session, headers=headers, timeout=run.timeout)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            run.record(group, method, op.path, op.path, desc, None, {}, b"",
                       f"{type(e).__name__}: {short(str(e), 200)}", off)
            return
        except Exception:  # noqa: BLE001 - a request the client cannot build (invalid header, bad URL)
            g.unsendable += 1
            return
        hdrs = {k.lower(): (v[0] if isinstance(v, list) and v else v) for k, v in resp.headers.items()}
        try:  # schemathesis's check, counted as a cross-check of `classify` (the same rule bar Retry-After)
            case.validate_response(resp, checks=[not_a_server_error])
        except CHECK_FAILED:
            g.st_not_a_server_error += 1
        for check, counter in ((response_schema_conformance, run.conformance),
                               (status_code_conformance, run.undocumented)):
            try:  # counted, not failed: the spec does not document every status yet
                case.validate_response(resp, checks=[check])
            except CHECK_FAILED as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                counter[(method, op.path, resp.status_code, short(first, 160))] += 1
                if check is response_schema_conformance:
                    g.schema_conformance_violations += 1
                else:
                    g.undocumented_status += 1
        run.record(group, method, op.path, resp.request.path_url, desc, resp.status_code, hdrs, resp.content, None,
                   off)

    return one


def run_schemathesis(run: Run, group: str, who: str, admin_routes: bool, max_examples: int, deadline: float,
                     seed: int) -> None:
    import hypothesis
    import hypothesis.errors
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, settings
    from schemathesis import GenerationMode

    g = run.groups[group]
    schema = schemathesis.openapi.from_url(f"{run.server.url}/openapi.json")
    ops = []
    for res in schema.get_all_operations():
        try:
            op = res.ok()
        except Exception as e:  # noqa: BLE001 - an operation schemathesis cannot load is reported, not fatal
            g.generation_errors += 1
            print(f"  schemathesis could not load an operation: {short(str(e), 200)}", file=sys.stderr)
            continue
        if op.path == "/metrics" or op.path.startswith("/v1/admin") != admin_routes:
            continue
        ops.append(op)
    session = requests.Session()
    headers = run.auth(who)
    url = run.server.url
    jobs = [(op, mode) for op in ops for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    for i, (op, mode) in enumerate(jobs):
        if time.monotonic() >= deadline:
            g.skipped_out_of_time += len(jobs) - i
            break
        # an equal share of what is left for each remaining (operation, mode)
        op_deadline = time.monotonic() + (deadline - time.monotonic()) / (len(jobs) - i)
        test = hypothesis.given(op.as_strategy(generation_mode=mode))(
            _make_case_runner(run, g, group, op, mode.value, op_deadline, url, session, headers))
        test = settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
                        suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
                        report_multiple_bugs=False, print_blob=False)(test)
        test = hypothesis.seed(seed + i)(test)
        try:
            test()
        except hypothesis.errors.Unsatisfiable:
            g.no_data_for_mode += 1  # e.g. no negative data exists for an operation whose inputs are all free strings
        except CHECK_FAILED as e:  # schemathesis serialization errors and the like
            g.generation_errors += 1
            print(f"  {op.method.upper()} {op.path} [{mode.value}]: {type(e).__name__}: {short(str(e), 200)}",
                  file=sys.stderr)
