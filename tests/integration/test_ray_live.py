"""Ray mode on a real local Ray cluster, the real model, the real PostgreSQL and Redis: `llmaas serve --ray` joins
a cluster started with `ray start` (as on a real one, through RAY_ADDRESS), with two ingress replicas. The official
SDK drives it: chat and streams, an `ft:` adapter, limits and budgets shared by both ingress replicas, scaling
0 -> 1 -> 2 -> 0 on engine load, a replica killed mid-stream, and the generated Serve config re-deployed.

One cluster for the module (Ray starts in seconds but each engine replica loads the model); the tests run in
order and each leaves the deployment as it found it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from openai import AsyncOpenAI, OpenAI

from llmaas.cluster.ray_env import haproxy_env, stop_haproxy
from tests.integration.conftest import ADMIN_KEY, _free_port

pytestmark = pytest.mark.integration
MODEL = "SmolLM2-135M-Instruct"
MSG = [{"role": "user", "content": "Write a long story about a cat who learns to sail."}]
SERVE_FLAGS = ["--threads", "1", "--max-seqs", "4", "--workers", "1"]
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


class RayPlatform:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp / "data"
        self.log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed in stop()
        gcs = _free_port()
        # In the foreground (--block), in a process group of its own: stopping it stops this cluster only, never
        # another one on the machine (`ray stop` would stop them all).
        self.ray = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={gcs}",
             "--num-cpus=4", "--include-dashboard=false", "--disable-usage-stats"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.env = {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"}
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self._start()
        except BaseException:
            self.stop()  # a platform that did not come up must not leave its cluster running
            raise

    def _start(self) -> None:
        for _ in range(120):
            probe = subprocess.run([sys.executable, "-c", "import ray; ray.init(); ray.shutdown()"], env=self.env,
                                   capture_output=True, timeout=60)
            if probe.returncode == 0:
                break
            time.sleep(0.5)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmaas.cli", "serve", "--ray", "--port", str(self.port), "--data-dir",
             str(self.data_dir), *SERVE_FLAGS], env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llmaas serve --ray exited:\n{(self.tmp / 'serve.log').read_text()[-4000:]}")
            try:
                # Up means what the tests take as given: the engine replica running, both ingress replicas too
                # (a replica still starting answers the admin API already).
                if httpx.get(f"{self.url}/v1/models", headers=HEADERS, timeout=2).status_code == 200 and \
                        running(self.deployment()) and self._ingress_running() == 2:
                    return
            except (httpx.HTTPError, KeyError, AssertionError):  # not answering yet, or not yet with a 200
                pass
            time.sleep(0.5)
        raise RuntimeError("Ray mode did not come up in 240 s")

    def client(self, key: str = ADMIN_KEY) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=120)

    def admin(self, method: str, path: str, **kw) -> dict:
        r = httpx.request(method, f"{self.url}/v1/admin{path}", headers=HEADERS, timeout=60, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def deployment(self) -> dict:
        return self.admin("GET", f"/deployments/{MODEL}")

    def _ingress_running(self) -> int:
        return len([i for i in self.admin("GET", "/deployments")["ingress"] if i["state"] == "running"])

    def wait(self, what: str, cond, timeout: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = self.deployment()
            if cond(d):
                return d
            time.sleep(0.5)
        raise AssertionError(f"{what}: not after {timeout:.0f} s; last {d}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        os.killpg(self.ray.pid, signal.SIGTERM)
        try:
            self.ray.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.ray.pid, signal.SIGKILL)
        self.log.close()


def running(d: dict) -> list[dict]:
    return [r for r in d["replicas"] if r["state"] == "running"]


@pytest.fixture(scope="module")
def ray_platform(tmp_path_factory) -> Iterator[RayPlatform]:
    base, redis_url = os.environ.get("LLMAAS_TEST_DATABASE_URL"), os.environ.get("LLMAAS_TEST_REDIS_URL")
    if not base or not redis_url:
        pytest.skip("Ray mode needs LLMAAS_TEST_DATABASE_URL and LLMAAS_TEST_REDIS_URL (CI sets both)")
    import psycopg
    import redis

    schema = "ray_" + uuid.uuid4().hex[:10]
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
    redis.from_url(redis_url).flushdb()
    env = {**os.environ, "LLMAAS_DATABASE_URL": f"{base}?options=-csearch_path%3D{schema}",
           "LLMAAS_REDIS_URL": redis_url, "LLMAAS_ADMIN_KEY": ADMIN_KEY, "LLMAAS_RAY_INGRESS_REPLICAS": "2",
           "LLMAAS_COLD_START_TIMEOUT_S": "120",
           # A throwaway cluster on 127.0.0.1: no token to share between `ray start` and its clients.
           "RAY_AUTH_MODE": "disabled",
           # HTTP through HAProxy into the ingress replicas, as `llmaas serve --ray` sets up a cluster it starts.
           **haproxy_env()}
    p = None
    try:
        p = RayPlatform(tmp_path_factory.mktemp("ray"), env)  # stops what it started if it does not come up
        yield p
    finally:
        if p is not None:
            p.stop()
        with psycopg.connect(base, autocommit=True) as c:
            c.execute(f"DROP SCHEMA {schema} CASCADE")
        stop_haproxy(env)


def _over_ingresses(p: RayPlatform, series: str) -> float:
    """A counter of the ingress process itself (not a replica's), summed over both ingress replicas' scrapes."""
    seen: dict[str, float] = {}
    for _ in range(40):
        r = httpx.get(f"{p.url}/metrics")
        seen[r.headers["x-llmaas-ingress"]] = sum(float(line.rsplit(" ", 1)[1]) for line in r.text.splitlines()
                                                  if line.startswith(series))
        if len(seen) == 2:
            break
    assert len(seen) == 2, seen
    return sum(seen.values())


def test_chat_and_stream_through_the_ray_ingress(ray_platform):
    p = ray_platform
    # Once both ingress replicas have read the replica's board record (its link), requests to it, on their own
    # node, go over the link and not through Serve's handle.
    p.wait("the replica on the board", lambda d: all(r["pid"] for r in running(d)))
    time.sleep(1.5)
    c = p.client()
    listed = {m.id: m for m in c.models.list().data}
    assert listed[MODEL].model_extra["status"] == "ready"
    r = c.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "Say hi"}],
                                                    max_tokens=8)
    assert r.headers["x-llmaas-ingress"]
    out = r.parse()
    assert out.choices[0].message.content and out.usage.completion_tokens > 0
    chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Count to five"}],
                                            max_tokens=16, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text and chunks[-1].usage.completion_tokens > 0
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in ("stop", "length")

    body = p.admin("GET", "/deployments")
    assert body["mode"] == "ray" and len([i for i in body["ingress"] if i["state"] == "running"]) == 2
    (d,) = body["data"]
    assert d["id"] == MODEL and d["application"] == "llmaas-model-SmolLM2-135M-Instruct"
    assert len(running(d)) == 1 and d["config"]["max_seqs"] == 4 and d["config"]["threads"] == 1
    rid = running(d)[0]["id"]
    series = f'llmaas:generation_tokens_total{{model="{MODEL}",replica="{rid}"}}'
    for _ in range(20):  # replicas publish their series every second
        metrics = httpx.get(f"{p.url}/metrics").text
        if series in metrics:
            break
        time.sleep(0.5)
    assert series in metrics
    assert f'llmaas:replicas{{model="{MODEL}",state="running"}} 1.0' in metrics
    routes = {route: _over_ingresses(p, f'llmaas:engine_routes_total{{model="{MODEL}",route="{route}"}}')
              for route in ("link", "handle")}
    assert routes == {"link": 2.0, "handle": 0.0}, routes


def test_a_client_that_leaves_mid_stream_stops_its_sequence_on_the_replica(ray_platform):
    # The disconnect crosses HAProxy, the ingress replica's own HTTP server and the link to the engine replica.
    p = ray_platform
    series = "llmaas:generation_tokens_total"  # every replica's, of the one model
    before = _metric(p, series, at_least=0)
    stream = p.client().chat.completions.create(model=MODEL, messages=MSG, max_tokens=1500, stream=True,
                                                extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    time.sleep(3)
    produced = _metric(p, series, at_least=0) - before
    time.sleep(2.5)  # two more publishes of the replica's series: nothing more was generated
    assert _metric(p, series, at_least=0) - before == produced and 5 <= produced < 1500 / 2, produced
    assert sum(r["running"] for r in running(p.deployment())) == 0


def _ft_model(p: RayPlatform, name: str) -> tuple[str, str]:
    """A tenant's `ft:` model (a random LoRA in the shared artifact dir) and a key of that tenant."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from llmaas.control.db.models import TenantModel
    from llmaas.training.lora_gguf import write_random_lora

    tenant = p.admin("POST", "/tenants", json={"name": f"{name}-" + uuid.uuid4().hex[:6]})["id"]
    key = p.admin("POST", f"/tenants/{tenant}/keys", json={"role": "member"})["key"]
    rel = f"adapters/{tenant}/{name}.gguf"
    (p.data_dir / "artifacts" / rel).parent.mkdir(parents=True, exist_ok=True)
    write_random_lora(p.data_dir / "artifacts" / rel, seed=7)
    ft = f"ft:{MODEL}:{tenant}:{name}:test"
    with Session(create_engine(p.env["LLMAAS_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"))) as s:
        s.add(TenantModel(id=ft, tenant_id=tenant, base_model=MODEL, job_id="ftjob-ray", step=None, adapter_path=rel,
                          created_at=datetime.now(UTC), lineage={}))
        s.commit()
    return ft, key


def test_an_ft_adapter_is_loaded_by_the_replica_that_serves_it(ray_platform):
    p = ray_platform
    ft, key = _ft_model(p, "ft")
    c = p.client(key)
    ask = {"messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 12, "temperature": 0}
    tuned = c.chat.completions.create(model=ft, **ask)
    base = c.chat.completions.create(model=MODEL, **ask)
    assert tuned.model == ft and tuned.choices[0].message.content != base.choices[0].message.content
    d = p.wait("the replica reports the adapter", lambda d: any(r["adapters"] for r in running(d)), 10)
    assert ft in [a for r in running(d) for a in r["adapters"]]
    assert float(_metric(p, "llmaas:adapter_loads_total")) >= 1


def test_a_hot_adapter_spreads_to_another_replica_when_its_replica_is_full(ray_platform):
    p = ray_platform
    p.admin("PUT", f"/deployments/{MODEL}", json={"min_replicas": 2, "max_replicas": 2})
    p.wait("two replicas", lambda d: len(running(d)) == 2)
    ft, key = _ft_model(p, "hot")
    client = AsyncOpenAI(base_url=f"{p.url}/v1", api_key=key, max_retries=0, timeout=300)

    async def burst() -> None:  # 8 sequences at once: more than one replica's 4 slots
        await asyncio.gather(*[client.chat.completions.create(
            model=ft, messages=MSG, max_tokens=48, extra_body={"ignore_eos": True}) for _ in range(8)])
        await client.close()

    asyncio.run(burst())
    d = p.wait("both replicas hold the adapter", lambda d: all(ft in r["adapters"] for r in running(d)), 10)
    assert len(running(d)) == 2
    p.admin("PUT", f"/deployments/{MODEL}", json={"min_replicas": 1, "max_replicas": 1})
    p.wait("back to one replica", lambda d: len(running(d)) == 1 and len(d["replicas"]) == 1)


def _metric(p: RayPlatform, name: str, at_least: float = 1.0, timeout: float = 6.0) -> float:
    """A metric summed over its series, once it reaches `at_least` (replicas publish every second and each
    ingress replica reads the board every second) or the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = sum(float(line.rsplit(" ", 1)[1]) for line in httpx.get(f"{p.url}/metrics").text.splitlines()
                if line.startswith(name + "{"))
        if v >= at_least or time.monotonic() > deadline:
            return v
        time.sleep(0.5)


async def _burst(p: RayPlatform, key: str, n: int, max_tokens: int = 4) -> list[int | str]:
    client = AsyncOpenAI(base_url=f"{p.url}/v1", api_key=key, max_retries=0, timeout=120)
    seen: set[str] = set()

    async def one() -> int | str:
        try:
            r = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=max_tokens,
                extra_body={"ignore_eos": True})
            seen.add(r.headers["x-llmaas-ingress"])
            return 200
        except openai.RateLimitError as e:
            seen.add(e.response.headers.get("x-llmaas-ingress", "?"))
            return e.code or "429"

    try:
        codes = await asyncio.gather(*[one() for _ in range(n)])
    finally:
        await client.close()
    assert len(seen) == 2, f"requests did not reach both ingress replicas: {seen}"
    return codes


def test_limits_and_budgets_are_shared_by_both_ingress_replicas(ray_platform):
    p = ray_platform
    t = p.admin("POST", "/tenants", json={"name": "rpm-" + uuid.uuid4().hex[:6]})["id"]
    key = p.admin("POST", f"/tenants/{t}/keys", json={"limits": {"rpm": 6}})["key"]
    codes = asyncio.run(_burst(p, key, 16))
    assert codes.count(200) == 6 and codes.count("rate_limit_exceeded") == 10, codes

    # A budget for exactly 3 worst-case requests (prompt + 4 tokens each), 12 sent at once over both replicas.
    p.admin("PUT", f"/models/{MODEL}", json={"input_usd_per_mtok": "3", "output_usd_per_mtok": "15"})
    probe = p.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=4, extra_body={"ignore_eos": True})
    cost = probe.usage.prompt_tokens * Decimal("0.000003") + 4 * Decimal("0.000015")
    t2 = p.admin("POST", "/tenants", json={"name": "bud-" + uuid.uuid4().hex[:6],
                                           "limits": {"budget_usd": str(cost * 3)}})["id"]
    key2 = p.admin("POST", f"/tenants/{t2}/keys", json={"role": "member"})["key"]
    codes = asyncio.run(_burst(p, key2, 12))
    assert codes.count(200) == 3 and set(codes) - {200} == {"insufficient_quota"}, codes
    for _ in range(100):
        usage = p.admin("GET", "/usage", params={"tenant_id": t2})["totals"]
        if usage["requests"] >= 3:
            break
        time.sleep(0.1)
    tenant = p.admin("GET", f"/tenants/{t2}")
    assert usage["requests"] == 3
    assert Decimal(tenant["budget"]["spent_usd"]) <= Decimal(tenant["limits"]["budget_usd"])


def _stream_tokens(c: OpenAI, max_tokens: int) -> tuple[float, int]:
    t0, first, n = time.monotonic(), None, 0
    for ch in c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=max_tokens, stream=True,
                                        extra_body={"ignore_eos": True}):
        if ch.choices and ch.choices[0].delta.content:
            first = first or time.monotonic() - t0
            n += 1
    return first or 0.0, n


def test_scale_to_zero_cold_start_and_up_on_engine_load(ray_platform):
    p = ray_platform
    d = p.admin("PUT", f"/deployments/{MODEL}", json={
        "min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 1,
        "downscale_delay_s": 4, "downscale_to_zero_delay_s": 4})
    assert d["config"]["min_replicas"] == 0 and d["config"]["max_replicas"] == 2
    assert any(e["action"] == "model.update" for e in p.admin("GET", "/audit")["data"])
    p.wait("idle -> 0 replicas", lambda d: d["target_replicas"] == 0 and not d["replicas"], 60)
    assert MODEL in {m.id for m in p.client().models.list().data}  # still listed at zero

    ttft, n = _stream_tokens(p.client(), 8)  # 0 -> 1: the request waits for the cold start
    assert n > 0 and ttft > 0.5, (ttft, n)
    assert _metric(p, "llmaas:cold_starts_total") >= 1

    # 1 -> 2: sustained streams beyond one replica's target load.
    client = AsyncOpenAI(base_url=f"{p.url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=300)

    async def load() -> None:
        await asyncio.gather(*[client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=160,
                                                              extra_body={"ignore_eos": True}) for _ in range(8)])

    async def watch() -> list[int]:
        task = asyncio.create_task(load())
        seen = []
        while not task.done():
            seen.append(len(running(await asyncio.to_thread(p.deployment))))
            await asyncio.sleep(0.5)
        await task
        await client.close()
        return seen

    seen = asyncio.run(watch())
    assert max(seen) == 2, seen
    p.wait("idle again -> 0 replicas", lambda d: d["target_replicas"] == 0 and not d["replicas"], 90)
    p.admin("PUT", f"/deployments/{MODEL}", json={"min_replicas": 1, "max_replicas": 1})
    p.wait("back to one replica", lambda d: len(running(d)) == 1)


def test_a_replica_killed_mid_stream_ends_its_streams_cleanly_others_finish_and_it_is_replaced(ray_platform):
    n_tokens = 400  # ~10 s with 4 sequences on one thread: all 8 run at once long after the board shows it
    p = ray_platform
    t = p.admin("POST", "/tenants", json={"name": "kill-" + uuid.uuid4().hex[:6]})["id"]
    key = p.admin("POST", f"/tenants/{t}/keys", json={"role": "member"})["key"]
    p.admin("PUT", f"/deployments/{MODEL}", json={"min_replicas": 2, "max_replicas": 2})
    replicas = running(p.wait("two replicas", lambda d: len(running(d)) == 2 and all(r["pid"] for r in running(d))))
    time.sleep(1.5)  # both ingress replicas have read the new replica's record (its link) by now
    victim = replicas[0]
    client = AsyncOpenAI(base_url=f"{p.url}/v1", api_key=key, max_retries=0, timeout=300)

    async def one(i: int) -> tuple[int, str | None]:
        got = 0
        try:
            stream = await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=n_tokens, stream=True,
                                                          extra_body={"ignore_eos": True})
            async for ch in stream:
                if ch.choices and ch.choices[0].delta.content:
                    got += 1
        except openai.APIError as e:
            return got, str(e.message)
        return got, None

    async def run() -> list[tuple[int, str | None]]:
        # 8 streams, 4 slots per replica: each replica holds 4. The victim dies once every stream is under way.
        tasks = [asyncio.create_task(one(i)) for i in range(8)]
        deadline = time.monotonic() + 60
        while (busy := sum(r["running"] for r in running(await asyncio.to_thread(p.deployment)))) < 8:
            assert time.monotonic() < deadline and not any(t.done() for t in tasks), f"{busy} of 8 streams running"
            await asyncio.sleep(0.2)
        os.kill(victim["pid"], signal.SIGKILL)
        out = await asyncio.gather(*tasks)
        await client.close()
        return out

    results = asyncio.run(run())
    failed = [(n, err) for n, err in results if err is not None]
    finished = [n for n, err in results if err is None]
    assert len(failed) == 4 and all("replica" in err for _, err in failed), results
    assert finished == [n_tokens] * 4, results  # the other replica's streams ran to the end
    produced = sum(n for n, _ in results)
    for _ in range(100):  # every stream is metered, the cut ones with the tokens produced before the replica died
        usage = p.admin("GET", "/usage", params={"tenant_id": t})["totals"]
        if usage["requests"] >= 8:
            break
        time.sleep(0.1)
    assert usage["requests"] == 8 and usage["completion_tokens"] >= produced, (usage, results)
    d = p.wait("Ray replaced the replica", lambda d: len(running(d)) == 2 and victim["id"] not in
               {r["id"] for r in running(d)}, 120)
    assert len(running(d)) == 2
    p.admin("PUT", f"/deployments/{MODEL}", json={"min_replicas": 1, "max_replicas": 1})
    p.wait("back to one replica", lambda d: len(running(d)) == 1 and len(d["replicas"]) == 1)
    assert p.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=4).usage.completion_tokens > 0


def test_the_generated_serve_config_is_what_runs_and_deploys(ray_platform, tmp_path):
    p = ray_platform
    out = tmp_path / "serve.yaml"
    subprocess.run([sys.executable, "-m", "llmaas.cli", "ray", "config", "--from-catalog", "-o", str(out),
                    "--port", str(p.port), "--data-dir", str(p.data_dir), *SERVE_FLAGS], env=p.env, check=True,
                   capture_output=True, timeout=120)
    config = yaml.safe_load(out.read_text())
    assert [a["name"] for a in config["applications"]] == ["llmaas", "llmaas-model-SmolLM2-135M-Instruct"]
    assert "postgresql" not in out.read_text() and ADMIN_KEY not in out.read_text()
    before = {r["id"] for r in running(p.deployment())}
    deploy = ("import sys, yaml, ray\nfrom ray.serve.context import _connect\nfrom ray.serve.schema import "
              "ServeDeploySchema\nray.init(logging_level='ERROR')\n"
              "_connect().deploy_apps(ServeDeploySchema.model_validate(yaml.safe_load(open(sys.argv[1]))), "
              "_blocking=True)\n")
    subprocess.run([sys.executable, "-c", deploy, str(out)], env=p.env, check=True, capture_output=True, timeout=180)
    time.sleep(3)
    # The same config as the running one: Serve changes nothing, the replica keeps serving.
    assert {r["id"] for r in running(p.deployment())} == before
    assert p.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=4).usage.completion_tokens > 0


def test_fine_tuning_runs_on_a_ray_worker_actor_and_is_served_at_once(ray_platform):
    from tests.integration.test_fine_tuning_flow import sentiment_rows

    p = ray_platform
    t = p.admin("POST", "/tenants", json={"name": "job-" + uuid.uuid4().hex[:6]})["id"]
    key = p.admin("POST", f"/tenants/{t}/keys", json={"role": "member"})["key"]
    c = p.client(key)
    f = c.files.create(file=("s.jsonl", sentiment_rows(16)), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model=MODEL, training_file=f.id, suffix="ray", seed=1, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}})
    deadline = time.monotonic() + 600
    while (job := c.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job.status
        time.sleep(1)
    assert job.status == "succeeded", job.error
    r = c.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "Great film!"}],
                                  max_tokens=4)
    assert r.model == job.fine_tuned_model and r.usage.completion_tokens > 0


def test_the_deployments_cli_shows_and_changes_the_running_deployment(ray_platform):
    p = ray_platform
    env = {**p.env, "LLMAAS_URL": p.url, "LLMAAS_API_KEY": ADMIN_KEY}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llmaas.cli", "admin", "deployments", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    out = cli("list")
    assert out.returncode == 0, out.stderr
    assert f"{MODEL}  [ready]  mode ray  replicas 1..1" in out.stdout and "  running  " in out.stdout
    before = {r["id"] for r in running(p.deployment())}
    out = cli("update", MODEL, "--upscale-delay-s", "2", "--json")
    assert out.returncode == 0, out.stderr
    assert '"upscale_delay_s": 2.0' in out.stdout
    time.sleep(3)
    assert {r["id"] for r in running(p.deployment())} == before  # an autoscaling change restarts no replica
    out = cli("update", MODEL, "--min-replicas", "3")  # above max_replicas (1): refused, nothing stored
    assert out.returncode == 1 and "min_replicas" in out.stderr
    assert p.deployment()["config"]["min_replicas"] == 1


def test_loading_a_catalog_model_deploys_it_and_unloading_removes_it(ray_platform):
    p = ray_platform
    m = p.admin("POST", "/models", json={"id": "smol-two", "package": "smollm2", "max_seqs": 2, "load": True})
    assert m["status"] in ("loading", "ready")
    deadline = time.monotonic() + 180
    while True:  # the application deploys, then its replica starts; both ingress replicas route to it
        d = httpx.get(f"{p.url}/v1/admin/deployments/smol-two", headers=HEADERS, timeout=30)
        if d.status_code == 200 and running(d.json()):
            break
        assert time.monotonic() < deadline, d.text
        time.sleep(1)
    assert d.json()["application"] == "llmaas-model-smol-two" and d.json()["config"]["max_seqs"] == 2
    # The answer above came from one ingress replica; each one picks up a new deployment on its own refresh (every
    # second), so the other may not route to it yet (a 404). Two refresh periods later both do.
    time.sleep(2.5)
    for _ in range(4):
        r = p.client().chat.completions.create(model="smol-two", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=4)
        assert r.model == "smol-two" and r.usage.completion_tokens > 0
    assert p.admin("POST", "/models/smol-two/unload")["status"] == "unloaded"
    deadline = time.monotonic() + 60
    while httpx.get(f"{p.url}/v1/admin/deployments/smol-two", headers=HEADERS).status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(1)
    for _ in range(4):  # whichever ingress replica answers
        with pytest.raises(openai.NotFoundError):
            p.client().chat.completions.create(model="smol-two", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=4)
    assert {d["id"] for d in p.admin("GET", "/deployments")["data"]} == {MODEL}
