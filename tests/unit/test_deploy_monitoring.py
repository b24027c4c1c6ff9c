"""The monitoring assets in deploy/: the Grafana dashboard and the Prometheus rules and config name only metrics
llmaas exports, and Prometheus's own checker accepts them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from llmaas.core.metrics import ClusterMetrics, ControlMetrics, EngineMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "llmaas.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
# PromQL identifiers; metric names are those with a colon (ours are all `llmaas:…`) plus Prometheus's `up`.
# The lookbehind skips `$__rate_interval` and the minutes of a subquery such as `[5m:1m]`.
_IDENT = re.compile(r"(?<![\w:$])[a-zA-Z_:][\w:]*")
NOT_LLMAAS = {"up"}


def exported_names() -> set[str]:
    """The sample names llmaas's /metrics can serve (`_total`, `_bucket`, … as prometheus_client writes them),
    with every metric of every metrics class on one registry and tenant labels on."""
    registry = CollectorRegistry()
    groups = (EngineMetrics(registry), ControlMetrics(registry, tenant_labels=True), ClusterMetrics(registry))
    for group in groups:
        for m in vars(group).values():
            if isinstance(m, MetricWrapperBase) and m._labelnames:  # a labelled metric has no samples until used
                m.labels(*["x"] * len(m._labelnames))
    return {s.name for metric in registry.collect() for s in metric.samples}


def metric_names(expr: str) -> set[str]:
    return {t for t in _IDENT.findall(expr) if ":" in t or t in NOT_LLMAAS}


def dashboard_exprs(dash: dict) -> Iterator[tuple[str, str]]:
    for p in dash["panels"]:
        for t in p.get("targets", []):
            yield p["title"], t["expr"]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            yield f"variable {v['name']}", q["query"] if isinstance(q, dict) else q


def alert_exprs() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def unknown_metrics(exprs: Iterator[tuple[str, str]], known: set[str]) -> dict[str, set[str]]:
    """Where each expression names a metric llmaas does not export; an expression naming none is an error too."""
    bad: dict[str, set[str]] = {}
    for where, expr in exprs:
        names = metric_names(expr)
        missing = (names - known - NOT_LLMAAS) or (set() if names else {f"<no metric in {expr!r}>"})
        if missing:
            bad.setdefault(where, set()).update(missing)
    return bad


def test_exported_names_are_exposition_names():
    names = exported_names()
    assert {"llmaas:requests_total", "llmaas:adapter_loads_total", "llmaas:cold_starts_total",
            "llmaas:cold_start_seconds_bucket", "llmaas:replicas", "llmaas:replica_load"} <= names
    assert "llmaas:requests" not in names  # a counter is only exposed with its suffix


def test_dashboard_names_only_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    assert unknown_metrics(dashboard_exprs(dash), exported_names()) == {}


def test_alert_rules_name_only_exported_metrics():
    assert unknown_metrics(alert_exprs(), exported_names()) == {}


def test_a_misspelt_metric_is_caught():
    known = exported_names()
    assert unknown_metrics(iter([("p", "sum(rate(llmaas:request_total[5m]))")]), known) == {
        "p": {"llmaas:request_total"}}
    assert unknown_metrics(iter([("p", "rate(llmaas:requests[5m])")]), known) == {"p": {"llmaas:requests"}}
    assert unknown_metrics(iter([("p", "sum(rate(lmaas_requests_total[5m]))")]), known) == {
        "p": {"<no metric in 'sum(rate(lmaas_requests_total[5m]))'>"}}
    assert metric_names('max_over_time(up{job="llmaas"}[1h:5m]) * $__rate_interval') == {"up"}


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        assert p.get("datasource", {}).get("uid") == "${datasource}", p["title"]
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        assert all(t.get("expr") for t in p["targets"]), p["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "model" in variables


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package "
                    "(apt-get install -y --no-install-recommends prometheus); .ci/run does it")
    return path


def promtool_check(check: str, path: Path) -> None:
    r = subprocess.run([promtool(), "check", check, str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(("check", "path"), [("rules", ALERTS), ("config", PROM_CONFIG)])
def test_promtool_accepts(check, path):
    promtool_check(check, path)


def test_dashboard_queries_are_valid_promql(tmp_path):
    # promtool parses rule expressions: each query becomes a recording rule, Grafana's variables filled in.
    dash = json.loads(DASHBOARD.read_text())
    fill = {"$__rate_interval": "5m", "$model": ".*"}
    rules = []
    for i, (_, expr) in enumerate(dashboard_exprs(dash)):
        for var, value in fill.items():
            expr = expr.replace(var, value)
        if not expr.startswith("label_values("):  # a Grafana function, not PromQL
            rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool_check("rules", path)
