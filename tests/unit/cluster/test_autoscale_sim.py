"""bench/autoscale_sim.py on a short ramp: the real policy, wrapped by Ray Serve, scales the simulated deployment
up under load and back to its minimum afterwards, for fewer replica-seconds than a static one sized for the peak."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")

BENCH = Path(__file__).resolve().parents[3] / "bench" / "autoscale_sim.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("autoscale_sim", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_short_ramp_scales_up_returns_to_min_and_costs_less_than_static():
    sim = load_bench()
    cfg = sim.SimConfig(base_x=0.5, peak_x=4.0, ramp_up_s=10.0, hold_s=10.0, ramp_down_s=10.0, tail_s=45.0,
                        warmup_s=5.0, downscale_delay_s=10.0, seed=3)
    rep = sim.run_both(cfg)
    auto, static = rep.auto, rep.static

    assert max(auto.timeline["running"]) > 1
    assert auto.timeline["target"][-1] == cfg.min_replicas
    assert auto.timeline["replicas"][-1] == cfg.min_replicas  # the stopped replicas have drained and gone
    assert auto.scale_ups >= 1 and auto.scale_downs >= 1
    assert rep.static_replicas == 6  # 4x one replica's capacity at 12 of its 16 slots per replica
    assert auto.replica_seconds < static.replica_seconds
    # Every measured request is accounted for, in both runs, and none was cut by a drain.
    assert len(auto.queue_s) == len(static.queue_s) == len(rep.arrivals) > 0
    assert auto.cut == 0
