"""Autoscaling, simulated: a traffic ramp from 1x to 8x one replica's capacity and back, served by an autoscaled
engine deployment and by a static one sized for the peak, with the same arrivals.

Why: before running many machines, see what the deployed policy does to queue time and to replica-seconds. The
decisions are the real ones: our `engine_load_policy`, wrapped by Ray Serve's `_apply_autoscaling_config` (upscale
and downscale delays, the scale-to-zero delay, the cold-start fast path), fed `AutoscalingContext` objects built
every 0.1 s (Serve's control loop) from metrics that replicas and the handle record and push the way Serve's do,
under the `AutoscalingConfig` that `llmaas.cluster.config.model_app` deploys. Only the engines are fake: a replica
has `slots` sequences, each busy for a fixed `service_s`, and takes `cold_start_s` to start.

    python bench/autoscale_sim.py [--quick] [--min-replicas 0] [--seed 1]   -> bench/results/autoscale_sim.{png,json}
"""

from __future__ import annotations

import argparse
import json
import math
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("ramp-up", "hold", "ramp-down", "tail")
EPS = 1e-9


@dataclass(frozen=True)
class SimConfig:
    slots: int = 16                      # sequences per replica (max_seqs = max_ongoing_requests)
    target_ongoing_requests: float = 0.0  # 0: the platform's default, three quarters of the replica's slots
    service_s: float = 128 * 0.08        # one request: 128 tokens at a 0.08 s step of 16 sequences
    cold_start_s: float = 4.3            # measured: a SmolLM2 replica from scheduled to serving, on this machine
    min_replicas: int = 1
    max_replicas: int = 16
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 60.0  # the platform's default
    downscale_to_zero_delay_s: float = 60.0
    base_x: float = 1.0                  # offered load in units of one replica's capacity
    peak_x: float = 8.0
    ramp_up_s: float = 60.0
    hold_s: float = 60.0
    ramp_down_s: float = 60.0
    tail_s: float = 60.0
    warmup_s: float = 30.0               # at base load before t=0, not measured: the run starts in steady state
    seed: int = 0
    dt: float = 0.1                      # Serve's control loop period

    @property
    def capacity(self) -> float:
        """Requests per second one replica completes when every slot is busy."""
        return self.slots / self.service_s

    @property
    def duration_s(self) -> float:
        return self.ramp_up_s + self.hold_s + self.ramp_down_s + self.tail_s


def offered_x(cfg: SimConfig, t: float) -> float:
    """The arrival rate at time t, in replica capacities."""
    span = cfg.peak_x - cfg.base_x
    if t < 0:
        return cfg.base_x
    if t < cfg.ramp_up_s:
        return cfg.base_x + span * t / cfg.ramp_up_s
    t -= cfg.ramp_up_s
    if t < cfg.hold_s:
        return cfg.peak_x
    t -= cfg.hold_s
    if t < cfg.ramp_down_s:
        return cfg.peak_x - span * t / cfg.ramp_down_s
    return cfg.base_x


def phase_of(cfg: SimConfig, t: float) -> int:
    edges = np.cumsum([cfg.ramp_up_s, cfg.hold_s, cfg.ramp_down_s])
    return int(np.searchsorted(edges, t, side="right"))


def poisson_arrivals(cfg: SimConfig) -> np.ndarray:
    """Arrival times of a Poisson process whose rate follows `offered_x`, constant within each step (warm-up
    included: negative times)."""
    rng = np.random.default_rng(cfg.seed)
    out = []
    for k in range(-round(cfg.warmup_s / cfg.dt), round(cfg.duration_s / cfg.dt)):
        t0 = k * cfg.dt
        n = rng.poisson(offered_x(cfg, t0 + cfg.dt / 2) * cfg.capacity * cfg.dt)
        out.append(np.sort(t0 + rng.random(n) * cfg.dt))
    return np.concatenate(out)


def engine_deployment(cfg: SimConfig) -> dict[str, Any]:
    """The Engine deployment the platform's Serve config has for a model with these settings."""
    from llmaas.cluster.config import model_app
    from llmaas.control.model_catalog import Entry
    from llmaas.core.config import Settings

    deployment = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                  "upscale_delay_s": cfg.upscale_delay_s, "downscale_delay_s": cfg.downscale_delay_s,
                  "downscale_to_zero_delay_s": cfg.downscale_to_zero_delay_s}
    if cfg.target_ongoing_requests:
        deployment["target_ongoing_requests"] = cfg.target_ongoing_requests
    entry = Entry("sim-model", "package", "smollm2", "", None, cfg.slots, ("chat",), None, False, 0, deployment)
    return model_app(Settings(max_seqs=cfg.slots), {}, entry)["deployments"][0]


def deployed_autoscaling_config(cfg: SimConfig) -> Any:
    """The AutoscalingConfig the platform deploys for a model with these settings (its policy included)."""
    from ray.serve.config import AutoscalingConfig

    return AutoscalingConfig(**engine_deployment(cfg)["autoscaling_config"])


class Gauge:
    """One metrics source as Serve runs it (a replica's or a handle's): a sample every record interval, and every
    metrics interval a push of the samples of the last look-back window; the controller averages the last push."""

    def __init__(self, start: float, record_s: float, push_s: float, look_back_s: float) -> None:
        self.record_s, self.push_s, self.look_back_s = record_s, push_s, look_back_s
        self.next_record, self.next_push = start, start + push_s
        self.samples: deque[tuple[float, float]] = deque()
        self.pushed: list[tuple[float, float]] = []

    def tick(self, now: float, value: float, push_now: bool = False) -> None:
        if now + EPS >= self.next_record:
            self.samples.append((now, value))
            self.next_record += self.record_s
        if push_now or now + EPS >= self.next_push:
            if push_now and (not self.samples or self.samples[-1][0] < now):
                self.samples.append((now, value))
            while self.samples and self.samples[0][0] < now - self.look_back_s:
                self.samples.popleft()
            self.pushed = list(self.samples)
            self.next_push = now + self.push_s

    def average(self, now: float) -> float | None:
        """Serve's time-weighted mean: each sample holds until the next, the last one until now."""
        if not self.pushed:
            return None
        ts = [t for t, _ in self.pushed] + [max(now, self.pushed[-1][0] + 1e-3)]
        weights = np.diff(ts)
        return float(np.dot(weights, [v for _, v in self.pushed]) / weights.sum())


@dataclass
class Replica:
    rid: Any                              # ray.serve ReplicaID (what the policy's metrics are keyed by)
    ready_at: float
    busy_until: list[float]               # per slot: when its sequence finishes
    gauge: Gauge | None = None            # from the moment the replica runs
    drain_from: float | None = None       # stopping: takes no new requests, finishes what it holds

    def running(self, now: float) -> bool:
        return self.ready_at <= now + EPS

    def load(self, now: float) -> int:
        return sum(b > now + EPS for b in self.busy_until)


@dataclass
class Run:
    name: str
    queue_s: np.ndarray                   # per request, in arrival order
    timeline: dict[str, list[float]]
    replica_seconds: float = 0.0
    scale_ups: int = 0
    scale_downs: int = 0
    cut: int = 0                          # sequences cut by a drain past graceful_shutdown_timeout_s


@contextmanager
def serve_clock(now: Callable[[], float]) -> Iterator[None]:
    """Serve's delay logic reads time.time(); here it reads the simulated clock."""
    from types import SimpleNamespace
    from unittest import mock

    import ray.serve.autoscaling_policy as policy_module

    with mock.patch.object(policy_module, "time", SimpleNamespace(time=now)):
        yield


class Controller:
    """What Serve's controller does for one autoscaled deployment each control-loop tick: build the context, call
    the wrapped policy, bound the decision by min/max replicas."""

    def __init__(self, config: Any, deployment_id: Any) -> None:
        from ray.serve._private.autoscaling_state import _resolve_policy_callable
        from ray.serve.autoscaling_policy import _apply_autoscaling_config

        self.config, self.deployment_id = config, deployment_id
        self.policy = _apply_autoscaling_config(_resolve_policy_callable(config.policy))
        self.state: dict[str, Any] = {}
        self.target = max(config.min_replicas, min(config.max_replicas, config.initial_replicas or config.min_replicas))
        self.last_up: float | None = None
        self.last_down: float | None = None

    def decide(self, now: float, running: list[Replica], queued: float, total: float) -> int:
        from ray.serve.config import AutoscalingContext

        from llmaas.cluster.autoscaling import LOAD_METRIC

        per_replica = {r.rid: avg for r in running if r.gauge and (avg := r.gauge.average(now)) is not None}
        ctx = AutoscalingContext(
            deployment_id=self.deployment_id, deployment_name=self.deployment_id.name,
            app_name=self.deployment_id.app_name, current_num_replicas=len(running),
            target_num_replicas=self.target, running_replicas=[r.rid for r in running], total_num_requests=total,
            total_queued_requests=queued, aggregated_metrics={LOAD_METRIC: per_replica} if per_replica else {},
            raw_metrics={}, capacity_adjusted_min_replicas=self.config.min_replicas,
            capacity_adjusted_max_replicas=self.config.max_replicas, policy_state=dict(self.state),
            last_scale_up_time=self.last_up, last_scale_down_time=self.last_down, current_time=now,
            config=self.config)
        decision, self.state = self.policy(ctx)
        return max(self.config.min_replicas, min(self.config.max_replicas, math.ceil(decision)))


def dispatch(queue: deque[float], replicas: list[Replica], t0: float, t1: float, service_s: float,
             waits: list[tuple[float, float]]) -> None:
    """FIFO from the handles' queue (max_ongoing_requests = slots) into the first slot any serving replica frees,
    at exact times within [t0, t1)."""
    open_ = [r for r in replicas if r.drain_from is None and r.running(t0)]
    while queue and open_:
        start = max(queue[0], t0, min(min(r.busy_until) for r in open_))
        if start >= t1:
            return
        # Serve's router prefers the replica with fewer ongoing requests (power of two choices); here the fewest,
        # which spreads the load as Serve does (and so how long a stopped replica drains).
        r = min((r for r in open_ if min(r.busy_until) <= start + EPS), key=lambda r: r.load(start))
        arrival = queue.popleft()
        waits.append((arrival, start - arrival))
        r.busy_until[r.busy_until.index(min(r.busy_until))] = start + service_s


def simulate(cfg: SimConfig, arrivals: np.ndarray, static_replicas: int | None = None) -> Run:
    """One deployment serving `arrivals`: autoscaled by the real policy, or `static_replicas` for the whole run."""
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve._private.constants import RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR as RECORD_FACTOR
    from ray.serve.config import AutoscalingConfig

    deployment = engine_deployment(cfg)
    config = AutoscalingConfig(**deployment["autoscaling_config"])
    grace_s = deployment["graceful_shutdown_timeout_s"]
    dep = DeploymentID(name=deployment["name"], app_name="llmaas-model-sim")
    # Replicas and handles record a sample this often and push every metrics_interval_s (as Serve's do).
    record_s = min(config.look_back_period_s * RECORD_FACTOR, config.metrics_interval_s)
    gauge = lambda start: Gauge(start, record_s, config.metrics_interval_s, config.look_back_period_s)  # noqa: E731
    ids = iter(range(10**9))

    def new_replica(ready_at: float) -> Replica:
        return Replica(ReplicaID(f"r{next(ids)}", dep), ready_at, [ready_at] * cfg.slots)

    controller = None if static_replicas is not None else Controller(config, dep)
    # The initial replicas are up before the warm-up; the warm-up brings them to steady state at base load.
    replicas = [new_replica(-cfg.warmup_s) for _ in range(static_replicas or controller.target)]  # type: ignore[union-attr]
    for r in replicas:
        r.gauge = gauge(-cfg.warmup_s)
    queued_gauge, total_gauge = gauge(-cfg.warmup_s), gauge(-cfg.warmup_s)
    run = Run("static" if controller is None else "autoscaled", np.empty(0),
              {k: [] for k in ("t", "offered_x", "replicas", "running", "target", "queue", "busy_x")})
    waits: list[tuple[float, float]] = []
    queue: deque[float] = deque()
    now, i = 0.0, 0
    with serve_clock(lambda: now):
        for step in range(-round(cfg.warmup_s / cfg.dt), round(cfg.duration_s / cfg.dt)):
            t0, now = step * cfg.dt, (step + 1) * cfg.dt
            measured = t0 > -EPS
            j = int(np.searchsorted(arrivals, now))
            queue.extend(arrivals[i:j].tolist())
            i = j
            dispatch(queue, replicas, t0, now, cfg.service_s, waits)
            # Starting and draining replicas hold their machine too.
            run.replica_seconds += len(replicas) * cfg.dt * measured
            replicas = retire(replicas, now, grace_s, run)
            serving = [r for r in replicas if r.drain_from is None and r.running(now)]
            for r in serving:
                r.gauge = r.gauge or gauge(now)
                r.gauge.tick(now, r.load(now))
            in_replicas = sum(r.load(now) for r in replicas)
            # A handle with queued requests and no replica pushes at once (Serve's scale-from-zero fast path).
            queued_gauge.tick(now, len(queue), push_now=not serving and bool(queue))
            total_gauge.tick(now, len(queue) + in_replicas, push_now=not serving and bool(queue))
            if controller is not None:
                target = controller.decide(now, serving, queued_gauge.average(now) or 0.0,
                                           total_gauge.average(now) or 0.0)
                if target != controller.target:
                    up = target > controller.target
                    run.scale_ups += up and measured
                    run.scale_downs += not up and measured
                    controller.last_up, controller.last_down = (now, controller.last_down) if up else \
                        (controller.last_up, now)
                    controller.target = target
                reconcile(replicas, target, now, cfg.cold_start_s, new_replica)
            if not measured:
                continue
            tl = run.timeline
            tl["t"].append(now)
            tl["offered_x"].append(offered_x(cfg, t0))
            tl["replicas"].append(len(replicas))
            tl["running"].append(len(serving))
            tl["target"].append(controller.target if controller else len(replicas))
            tl["queue"].append(len(queue))
            tl["busy_x"].append(in_replicas / cfg.slots)
    # Requests still queued at the end count with the time they have waited so far.
    waits += [(a, now - a) for a in queue]
    run.queue_s = np.array([w for a, w in sorted(waits) if a >= 0])
    return run


def retire(replicas: list[Replica], now: float, grace_s: float, run: Run) -> list[Replica]:
    """Drop draining replicas that have finished their sequences, or whose graceful shutdown timed out."""
    kept = []
    for r in replicas:
        if r.drain_from is not None and (r.load(now) == 0 or now - r.drain_from >= grace_s):
            run.cut += r.load(now)
            continue
        kept.append(r)
    return kept


def reconcile(replicas: list[Replica], target: int, now: float, cold_start_s: float,
              new_replica: Callable[[float], Replica]) -> None:
    """Start or stop replicas until `target` are running or starting. Like Serve, stop starting replicas first;
    then the running ones holding the fewest sequences, which drain (no new requests) before they go."""
    live = [r for r in replicas if r.drain_from is None]
    for _ in range(target - len(live)):
        replicas.append(new_replica(now + cold_start_s))
    if len(live) <= target:
        return
    starting = sorted((r for r in live if not r.running(now)), key=lambda r: -r.ready_at)
    running = sorted((r for r in live if r.running(now)), key=lambda r: r.load(now))
    for r in (starting + running)[:len(live) - target]:
        if r.running(now):
            r.drain_from = now
        else:
            replicas.remove(r)


@dataclass
class Report:
    cfg: SimConfig
    static_replicas: int
    auto: Run
    static: Run
    arrivals: np.ndarray                  # the measured ones (t >= 0)
    target_p95_s: float = 2.0
    phases: dict[str, dict[str, float]] = field(default_factory=dict)


def run_both(cfg: SimConfig, target_p95_s: float = 2.0, static_replicas: int | None = None) -> Report:
    """The autoscaled and the static deployment on the same arrivals. Static: enough replicas that the peak is at
    most target_ongoing_requests per replica (the platform's target is three quarters of the replica's slots)."""
    arrivals = poisson_arrivals(cfg)
    target = deployed_autoscaling_config(cfg).get_target_ongoing_requests()
    n_static = static_replicas or math.ceil(cfg.peak_x * cfg.capacity * cfg.service_s / target - EPS)
    rep = Report(cfg, n_static, simulate(cfg, arrivals), simulate(cfg, arrivals, n_static), arrivals[arrivals >= 0],
                 target_p95_s)
    phase = np.array([phase_of(cfg, a) for a in rep.arrivals], dtype=int)
    for run in (rep.auto, rep.static):
        rep.phases[run.name] = {name: pct(run.queue_s[phase == k], 95) for k, name in enumerate(PHASES)}
    return rep


def pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else 0.0


def summary(run: Run, rep: Report) -> dict[str, float]:
    q = run.queue_s
    return {"requests": len(q), "p50_queue_s": pct(q, 50), "p95_queue_s": pct(q, 95), "p99_queue_s": pct(q, 99),
            "max_queue_s": float(q.max()) if len(q) else 0.0, "max_queue_len": max(run.timeline["queue"]),
            "share_over_target": float((q > rep.target_p95_s).mean()) if len(q) else 0.0,
            "replica_seconds": run.replica_seconds, "max_replicas": max(run.timeline["replicas"]),
            "scale_ups": run.scale_ups, "scale_downs": run.scale_downs, "cut_sequences": run.cut}


def table(rep: Report) -> str:
    a, s = summary(rep.auto, rep), summary(rep.static, rep)
    c = rep.cfg
    rows = [("requests", "{:.0f}"), ("p50_queue_s", "{:.2f}"), ("p95_queue_s", "{:.2f}"), ("p99_queue_s", "{:.2f}"),
            ("max_queue_s", "{:.2f}"), ("max_queue_len", "{:.0f}"), ("share_over_target", "{:.1%}"),
            ("replica_seconds", "{:.0f}"), ("max_replicas", "{:.0f}"), ("scale_ups", "{:.0f}"),
            ("scale_downs", "{:.0f}")]
    lines = [f"capacity {c.capacity:.3f} req/s per replica ({c.slots} slots x {c.service_s:.2f} s), "
             f"load {c.base_x:g}x -> {c.peak_x:g}x -> {c.base_x:g}x over {c.duration_s:.0f} s, "
             f"{len(rep.arrivals)} requests, seed {c.seed}",
             f"autoscaled: target {deployed_autoscaling_config(c).get_target_ongoing_requests():g} ongoing per "
             f"replica, min {c.min_replicas} "
             f"max {c.max_replicas}, delays up {c.upscale_delay_s:g} s / down "
             f"{c.downscale_delay_s:g} s / to zero {c.downscale_to_zero_delay_s:g} s, cold start {c.cold_start_s:g} s;"
             f" static: {rep.static_replicas} replicas", "",
             f"{'metric':<20}{'autoscaled':>12}{'static':>12}"]
    lines += [f"{k:<20}{fmt.format(a[k]):>12}{fmt.format(s[k]):>12}" for k, fmt in rows]
    lines.append(f"{'p95 by phase (s)':<20}" + "".join(f"{p:>12}" for p in PHASES))
    for name in ("autoscaled", "static"):
        lines.append(f"  {name:<18}" + "".join(f"{rep.phases[name][p]:>12.2f}" for p in PHASES))
    lines.append(f"replica-seconds autoscaled/static: {a['replica_seconds'] / s['replica_seconds']:.2f}")
    for name, m in (("autoscaled", a), ("static", s)):
        miss = m["p95_queue_s"] - rep.target_p95_s
        verdict = f"miss by {miss:.2f} s" if miss > 0 else f"pass ({-miss:.2f} s to spare)"
        lines.append(f"p95 queue vs target {rep.target_p95_s:g} s, {name}: {m['p95_queue_s']:.2f} s -> {verdict}")
    return "\n".join(lines)


def plot(rep: Report, path: Path) -> Path:
    """A PNG of replicas, offered load and queue length over time; a CSV of the same if matplotlib is missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a, s = rep.auto.timeline, rep.static.timeline
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        csv = path.with_suffix(".csv")
        cols = ["t", "offered_x", "replicas", "running", "target", "queue", "busy_x"]
        rows = [",".join(cols + ["static_replicas", "static_queue"])]
        rows += [",".join(f"{a[c][k]:g}" for c in cols) + f",{s['replicas'][k]:g},{s['queue'][k]:g}"
                 for k in range(len(a["t"]))]
        csv.write_text("\n".join(rows) + "\n")
        return csv
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=[3, 2])
    top.plot(a["t"], a["offered_x"], color="0.6", lw=1, label="offered load (replica capacities)")
    top.plot(a["t"], a["busy_x"], color="tab:green", lw=0.8, alpha=0.7, label="busy slots / slots (autoscaled)")
    top.step(a["t"], a["target"], where="post", color="tab:orange", lw=1, ls="--", label="autoscaler target")
    top.step(a["t"], a["replicas"], where="post", color="tab:blue", lw=1.6, label="replicas held (autoscaled)")
    top.step(a["t"], a["running"], where="post", color="tab:cyan", lw=1, label="replicas serving (autoscaled)")
    top.step(s["t"], s["replicas"], where="post", color="tab:red", lw=1.4, label=f"static ({rep.static_replicas})")
    top.set_ylabel("replicas / load (x one replica)")
    top.legend(loc="upper right", fontsize=8)
    top.grid(alpha=0.3)
    bottom.plot(a["t"], a["queue"], color="tab:blue", lw=1, label="queued at handles (autoscaled)")
    bottom.plot(s["t"], s["queue"], color="tab:red", lw=1, label="queued at handles (static)")
    bottom.set_ylabel("requests queued")
    bottom.set_xlabel("time (s)")
    bottom.legend(loc="upper right", fontsize=8)
    bottom.grid(alpha=0.3)
    c = rep.cfg
    for ax in (top, bottom):
        for edge in np.cumsum([c.ramp_up_s, c.hold_s, c.ramp_down_s]):
            ax.axvline(edge, color="0.8", lw=0.8, ls=":")
    sa, ss = summary(rep.auto, rep), summary(rep.static, rep)
    fig.suptitle(f"Autoscaling, simulated: p95 queue {sa['p95_queue_s']:.2f} s vs {ss['p95_queue_s']:.2f} s static "
                 f"(target {rep.target_p95_s:g} s); replica-seconds "
                 f"{sa['replica_seconds'] / ss['replica_seconds']:.2f}x static", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


QUICK = {"ramp_up_s": 20.0, "hold_s": 20.0, "ramp_down_s": 20.0, "tail_s": 40.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = SimConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Defaults are None so that --quick changes only what was not given.
    for name, value in asdict(d).items():
        if name != "dt":
            p.add_argument("--" + name.replace("_", "-"), type=type(value), default=None, help=f"default {value:g}")
    p.add_argument("--static-replicas", type=int, default=None, help="default: sized for the peak at target")
    p.add_argument("--target-p95-queue-s", type=float, default=2.0)
    p.add_argument("--quick", action="store_true", help="20 s phases, a 40 s tail (a few seconds)")
    p.add_argument("--plot", type=Path, default=ROOT / "bench/results/autoscale_sim.png")
    p.add_argument("--json", type=Path, default=ROOT / "bench/results/autoscale_sim.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    given = {k: v for k in asdict(SimConfig()) if (v := getattr(args, k, None)) is not None}
    cfg = SimConfig(**{**(QUICK if args.quick else {}), **given})
    rep = run_both(cfg, args.target_p95_queue_s, args.static_replicas)
    print(table(rep))
    out = plot(rep, args.plot)
    print(f"plot: {out}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"config": asdict(cfg), "static_replicas": rep.static_replicas,
                                     "target_p95_queue_s": rep.target_p95_s, "p95_by_phase": rep.phases,
                                     "autoscaled": summary(rep.auto, rep), "static": summary(rep.static, rep)},
                                    indent=2))
    print(f"json: {args.json}")


if __name__ == "__main__":
    main()
