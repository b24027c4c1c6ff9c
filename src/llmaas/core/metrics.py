"""Prometheus metrics of a llmaas process, registered on a registry the app factory owns.

Names follow vLLM's (`vllm:` → `llmaas:`) so existing dashboards map over.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)
_E2E_BUCKETS = (0.1, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)
# A cold start loads weights into a new replica: seconds to minutes, not the request latencies above.
_COLD_START_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
REPLICA_STATES = ("starting", "running", "stopping")


class EngineMetrics:
    """The data-plane metrics, labelled by model."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        lbl = ["model"]
        self.ttft = Histogram(
            "llmaas:time_to_first_token_seconds", "Time to first token (interactive requests; not batch lines)", lbl,
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.itl = Histogram(
            "llmaas:inter_token_latency_seconds", "Latency between generated tokens (interactive requests)", lbl,
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.e2e = Histogram(
            "llmaas:e2e_request_latency_seconds", "End-to-end request latency", lbl,
            buckets=_E2E_BUCKETS, registry=registry,
        )
        self.running = Gauge("llmaas:num_requests_running", "Sequences in the batch", lbl, registry=registry)
        self.waiting = Gauge("llmaas:num_requests_waiting", "Requests waiting for a slot", lbl, registry=registry)
        self.prompt_tokens = Counter(
            "llmaas:prompt_tokens", "Prompt tokens processed", lbl, registry=registry
        )
        self.generation_tokens = Counter(
            "llmaas:generation_tokens", "Tokens generated", lbl, registry=registry
        )
        # A batch line sent back to the queue to give its slot to an interactive request (engine/scheduler.py).
        self.preemptions = Counter(
            "llmaas:preemptions", "Batch-line sequences preempted for interactive requests", lbl, registry=registry
        )
        self.kv_usage = Gauge(
            "llmaas:kv_cache_usage_perc", "Fraction of KV cache cells in use (0-1)", lbl, registry=registry
        )
        self.engine_restarts = Counter(
            "llmaas:engine_restarts", "Scheduler threads replaced after a fault", lbl, registry=registry
        )
        self.adapters_loaded = Gauge(
            "llmaas:adapters_loaded", "LoRA adapters loaded on the base model", lbl, registry=registry
        )
        # Loads, not cache hits: a rate that stays high means the adapter cache is too small for the traffic.
        self.adapter_loads = Counter(
            "llmaas:adapter_loads", "LoRA adapter loads into an engine", lbl, registry=registry
        )


class ControlMetrics:
    """The control-plane metrics: traffic, spend and rejections, per tenant only when `tenant_labels` is on.

    Tenant ids and their spend are business data: whoever can scrape /metrics would see every tenant, so the
    per-tenant series are opt-in (LLMAAS_METRICS_TENANT_LABELS); by default the same counters are exported
    without the tenant label."""

    def __init__(self, registry: CollectorRegistry, *, tenant_labels: bool = False) -> None:
        self.tenant_labels = tenant_labels
        t = ["tenant"] if tenant_labels else []
        self._requests = Counter("llmaas:requests", "Requests by model, tenant and outcome",
                                 ["model", *t, "status"], registry=registry)
        self._spend = Counter("llmaas:spend_usd", "Spend in USD", t, registry=registry)
        self._rate_limited = Counter("llmaas:rate_limited", "Requests refused by a limit",
                                     [*t, "reason"], registry=registry)

    def _t(self, tenant: str) -> tuple[str, ...]:
        return (tenant,) if self.tenant_labels else ()

    def request(self, model: str, tenant: str, status: str) -> None:
        self._requests.labels(model, *self._t(tenant), status).inc()

    def spend(self, tenant: str, usd: float) -> None:
        (self._spend.labels(*self._t(tenant)) if self.tenant_labels else self._spend).inc(usd)

    def rate_limited(self, tenant: str, reason: str) -> None:
        self._rate_limited.labels(*self._t(tenant), reason).inc()


class ClusterMetrics:
    """The scale-out metrics, exported by the ingress: replicas per model and what scaling from zero costs.

    In that mode the ingress also re-exports each replica's EngineMetrics with a `replica` label added, so
    queries over engine series aggregate with `sum by (model)` to work with and without it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.replicas = Gauge(
            "llmaas:replicas", f"Replicas of a model by state ({'/'.join(REPLICA_STATES)})", ["model", "state"],
            registry=registry,
        )
        self.cold_starts = Counter(
            "llmaas:cold_starts", "Requests that found their model at zero replicas and waited for one", ["model"],
            registry=registry,
        )
        self.cold_start_seconds = Histogram(
            "llmaas:cold_start_seconds", "Time a request waited for a model's first replica", ["model"],
            buckets=_COLD_START_BUCKETS, registry=registry,
        )
        self.engine_routes = Counter(
            "llmaas:engine_routes", "Generation requests by how the ingress reached a replica: link (a Unix socket "
            "to a replica on its node) or handle (Ray Serve)", ["model", "route"], registry=registry,
        )
        self.replica_load = Gauge(
            "llmaas:replica_load", "Running plus waiting sequences on one replica", ["model", "replica"],
            registry=registry,
        )
