"""The replicas' notice board, in Redis: each engine replica publishes its load, the adapters it holds and its
Prometheus series every second (a key that expires when the replica is gone); the ingress reads it for
/v1/admin/deployments and re-exports the series, labelled by replica, on its one /metrics scrape."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

PREFIX = "llmaas:replica:"
TTL_S = 5


def snapshot(registry: CollectorRegistry) -> list[dict[str, Any]]:
    """A registry's series as plain data."""
    return [{"name": m.name, "type": m.type, "doc": m.documentation,
             "samples": [[s.name, s.labels, s.value] for s in m.samples]} for m in registry.collect()]


def families(records: list[dict[str, Any]]) -> list[Metric]:
    """Every replica's series as metric families, each sample labelled with its replica."""
    out: dict[str, Metric] = {}
    for rec in records:
        for f in rec.get("metrics", ()):
            fam = out.get(f["name"])
            if fam is None:
                fam = out[f["name"]] = Metric(f["name"], f["doc"], f["type"])
            for name, labels, value in f["samples"]:
                fam.add_sample(name, {**labels, "replica": rec["id"]}, value)
    return list(out.values())


class ReplicaBoard:
    def __init__(self, redis_url: str) -> None:
        import redis.asyncio as redis

        self._r = redis.from_url(redis_url)

    async def publish(self, model: str, replica_id: str, record: dict[str, Any]) -> None:
        await self._r.set(f"{PREFIX}{model}\x00{replica_id}", json.dumps(record), ex=TTL_S)

    async def remove(self, model: str, replica_id: str) -> None:
        await self._r.delete(f"{PREFIX}{model}\x00{replica_id}")

    async def records(self) -> list[dict[str, Any]]:
        keys = [k async for k in self._r.scan_iter(match=f"{PREFIX}*", count=500)]
        if not keys:
            return []
        return [json.loads(v) for v in await self._r.mget(keys) if v is not None]

    async def close(self) -> None:
        await self._r.aclose()
