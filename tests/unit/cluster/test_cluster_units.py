"""Ray mode's pure parts, without a cluster: the deployment config and its validation, the Serve config it
becomes (validated by Ray Serve's own schema), the autoscaling policy, the board's re-labelled series, errors
that cross the process boundary whole, and what Ray mode refuses to start with."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from llmaas.cluster.autoscaling import LOAD_METRIC, engine_load_policy
from llmaas.cluster.board import families, snapshot
from llmaas.cluster.config import SECRET_SETTINGS, app_name, serve_config
from llmaas.cluster.ray_env import RayModeError, check_shared_state
from llmaas.control.model_catalog import Entry
from llmaas.core.config import Settings
from llmaas.core.errors import InvalidRequestError, ModelNotReadyError, OverloadedError
from llmaas.core.metrics import EngineMetrics
from llmaas.serving.deployments import DeploymentConfig


def entry(model_id: str = "SmolLM2-135M-Instruct", **deployment) -> Entry:
    return Entry(model_id, "package", "smollm2", "", None, None, ("chat",), None, True, 0, deployment)


def test_deployment_defaults_and_stored_changes():
    s = Settings(max_seqs=16, threads=2, max_adapters=8)
    cfg = DeploymentConfig.of(s, entry())
    assert (cfg.min_replicas, cfg.max_replicas, cfg.target_ongoing_requests, cfg.max_seqs) == (1, 1, 12.0, 16)
    cfg = DeploymentConfig.of(s, entry(min_replicas=0, max_replicas=3, max_seqs=4))
    assert (cfg.min_replicas, cfg.max_replicas, cfg.max_seqs, cfg.target_ongoing_requests) == (0, 3, 4, 3.0)


@pytest.mark.parametrize("changes,field", [({"min_replicas": 5}, "min_replicas"),
                                           ({"max_replicas": 0, "min_replicas": 1}, "min_replicas"),
                                           ({"initial_replicas": 9}, "initial_replicas")])
def test_inconsistent_changes_are_400_naming_the_field(changes, field):
    cfg = DeploymentConfig.of(Settings(), entry(max_replicas=2))
    with pytest.raises(InvalidRequestError) as e:
        cfg.changed(changes)
    assert e.value.param == field


def test_serve_config_is_valid_for_ray_serve_and_keeps_secrets_out():
    from ray.serve.schema import ServeDeploySchema

    s = Settings(host="0.0.0.0", port=9000, max_queued=64)
    overrides = {"models": ["smollm2"], "threads": 2, "admin_key": "k" * 24, "database_url": "postgresql://x",
                 "data_dir": Path("/srv/llmaas")}
    cfg = serve_config(s, overrides, [entry(min_replicas=0, max_replicas=4, downscale_to_zero_delay_s=30),
                                      entry("odd/id:x")])
    schema = ServeDeploySchema.model_validate(cfg)
    names = [a.name for a in schema.applications]
    assert names == ["llmaas", app_name("SmolLM2-135M-Instruct"), app_name("odd/id:x")]
    assert app_name("odd/id:x") != app_name("odd_id_x") and app_name("a") == "llmaas-model-a"
    ingress, model = cfg["applications"][0], cfg["applications"][1]
    assert ingress["route_prefix"] == "/" and model["route_prefix"] is None
    auto = model["deployments"][0]["autoscaling_config"]
    assert auto["min_replicas"] == 0 and auto["max_replicas"] == 4 and auto["downscale_to_zero_delay_s"] == 30
    assert auto["policy"]["policy_function"] == "llmaas.cluster.autoscaling:engine_load_policy"
    assert model["deployments"][0]["max_queued_requests"] == 64
    text = repr(cfg)
    assert "postgresql" not in text and "k" * 24 not in text
    assert not SECRET_SETTINGS & set(ingress["args"]["settings"]) and ingress["args"]["settings"]["data_dir"] == \
        "/srv/llmaas"


def _ctx(replicas: int, loads: list[float], queued: float = 0, total: float = 0, target: float = 4) -> SimpleNamespace:
    return SimpleNamespace(current_num_replicas=replicas, target_num_replicas=replicas,
                           aggregated_metrics={LOAD_METRIC: {f"r{i}": v for i, v in enumerate(loads)}} if loads else {},
                           total_queued_requests=queued, total_num_requests=total,
                           config=SimpleNamespace(get_target_ongoing_requests=lambda: target))


def test_policy_sizes_replicas_to_engine_load_plus_handle_queue():
    assert engine_load_policy(_ctx(1, [4]))[0] == 1  # full, not over
    assert engine_load_policy(_ctx(1, [6], queued=5))[0] == 3  # 11 sequences / 4 per replica
    assert engine_load_policy(_ctx(2, [0, 0]))[0] == 0  # idle: Serve's delays decide when
    assert engine_load_policy(_ctx(1, [], total=9))[0] == 3  # no report yet: the handles' count
    assert engine_load_policy(_ctx(0, [], total=1))[0] == 0  # from zero: Serve's cold-start path starts one


def test_board_series_are_relabelled_by_replica():
    m = EngineMetrics(CollectorRegistry())
    m.running.labels("smol").set(3)
    m.ttft.labels("smol").observe(0.05)
    recs = [{"id": "rep-a", "metrics": snapshot(m.registry)}, {"id": "rep-b", "metrics": snapshot(m.registry)}]
    class Board:
        def collect(self):
            return families(recs)

    reg = CollectorRegistry()
    reg.register(Board())
    text = generate_latest(reg).decode()
    assert 'llmaas:num_requests_running{model="smol",replica="rep-a"} 3.0' in text
    assert 'llmaas:num_requests_running{model="smol",replica="rep-b"} 3.0' in text
    assert 'llmaas:time_to_first_token_seconds_count{model="smol",replica="rep-b"} 1.0' in text
    assert text.count("# TYPE llmaas:num_requests_running gauge") == 1


def test_errors_cross_the_process_boundary_whole():
    for e in (InvalidRequestError("bad", param="messages", code="x"), OverloadedError("full", retry_after_s=3),
              ModelNotReadyError("m", "starting", retry_after_s=10)):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and back.to_dict() == e.to_dict() and back.headers == e.headers
        assert back.status_code == e.status_code and str(back) == str(e)


def test_ray_mode_refuses_sqlite_missing_redis_and_a_relative_data_dir(tmp_path):
    with pytest.raises(RayModeError, match="LLMAAS_DATABASE_URL"):
        check_shared_state(Settings(data_dir=tmp_path, redis_url="redis://x"))
    with pytest.raises(RayModeError, match="LLMAAS_REDIS_URL"):
        check_shared_state(Settings(data_dir=tmp_path, database_url="postgresql://x/y"))
    with pytest.raises(RayModeError, match="absolute"):
        check_shared_state(Settings(data_dir=Path("rel"), database_url="postgresql://x/y", redis_url="redis://x"))
    check_shared_state(Settings(data_dir=tmp_path, database_url="postgresql://x/y", redis_url="redis://x"))


def test_without_ray_the_cli_says_how_to_install_it(monkeypatch, tmp_path):
    import importlib.util

    from typer.testing import CliRunner

    from llmaas.cli.main import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("ray") else real(name, *a))
    env = {"LLMAAS_DATABASE_URL": "postgresql://x/y", "LLMAAS_REDIS_URL": "redis://x"}
    for args in (["serve", "--ray", "--data-dir", str(tmp_path)], ["ray", "config"]):
        out = CliRunner().invoke(app, args, env=env)
        assert out.exit_code == 2, out.output
        assert "pip install 'llmaas[ray]'" in out.output


def test_ray_mode_with_sqlite_is_refused_before_anything_starts(tmp_path):
    from typer.testing import CliRunner

    from llmaas.cli.main import app

    out = CliRunner().invoke(app, ["serve", "--ray", "--data-dir", str(tmp_path)],
                             env={"LLMAAS_DATABASE_URL": "", "LLMAAS_REDIS_URL": "redis://x"})
    assert out.exit_code == 2 and "LLMAAS_DATABASE_URL" in out.output and "SQLite" in out.output


def test_the_haproxy_front_gets_files_and_ports_of_its_own_or_is_left_off(monkeypatch):
    from llmaas.cluster import ray_env

    a, b = ray_env.haproxy_env(), ray_env.haproxy_env()
    try:
        assert a["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and a["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] != \
            b["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
        # Serve puts each socket under <base>/<node id, 56 characters>/; HAProxy refuses paths over 97 bytes.
        for key in ("RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"):
            base, name = os.path.split(a[key])
            assert len(os.path.join(base, "n" * 56, name)) <= 97, a[key]
        assert a["RAY_SERVE_HAPROXY_STATS_PORT"] != a["RAY_SERVE_HAPROXY_METRICS_PORT"]
        # What is left of a front when its cluster is gone: stopped, its files removed; another front's kept.
        base = a["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"]
        exe = Path(base) / "haproxy"
        exe.symlink_to(sys.executable)
        sleeper = ["-c", "import time; time.sleep(60)"]
        mine = subprocess.Popen([str(exe), *sleeper, "-f", f"{base}/node/haproxy.cfg"])
        other = subprocess.Popen([str(exe), *sleeper, "-f", f"{b['RAY_SERVE_HAPROXY_SERVER_STATE_BASE']}/x.cfg"])
        try:
            ray_env.stop_haproxy(a)
            assert mine.wait(timeout=10) is not None and other.poll() is None and not os.path.exists(base)
        finally:
            other.kill()
            mine.kill()
    finally:
        for env in (a, b):
            shutil.rmtree(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"], ignore_errors=True)
    monkeypatch.setattr(ray_env, "haproxy_binary", lambda: None)
    assert ray_env.haproxy_env() == {}  # Serve's own proxy, with a warning that says what to install
