"""The autoscaling policy of engine deployments: replicas for the sequences the engines hold, not only the
requests Ray Serve counts at its handles.

Ray Serve's default policy divides open requests by target_ongoing_requests. An engine knows more: how many
sequences run in its slots and how many wait for one (a request with n=4 is four), so each replica reports
running + waiting (`record_autoscaling_stats`) and this policy sizes the deployment to that load plus the
requests still queued at the handles (not on any replica yet). Ray Serve wraps it with min/max replicas,
upscale/downscale delays and the scale-to-zero delay, and starts a replica at once for a request that finds none.
"""

from __future__ import annotations

import math
from typing import Any

LOAD_METRIC = "engine_load"


def engine_load_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """ctx: ray.serve.config.AutoscalingContext. Returns the replicas wanted and the policy's state."""
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, {}
    per_replica = (ctx.aggregated_metrics or {}).get(LOAD_METRIC, {})
    # No report yet (a replica just started): what the handles count.
    demand = sum(per_replica.values()) + (ctx.total_queued_requests or 0) if per_replica else ctx.total_num_requests
    target = ctx.config.get_target_ongoing_requests()
    return math.ceil(demand / target - 1e-9), {}
