"""GET /metrics: the Prometheus text exposition.

Counters and pool gauges come from ``zonerelay.metrics`` (summed over the worker processes'
files in multiprocess mode); ``zonemta_queue_size`` is read from the store at scrape time,
so it always equals what the queue holds. The instances sharing the store (their heartbeat
and the leases they hold) are read at scrape time too, so every instance's /metrics shows the
whole cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from zonerelay import metrics
from zonerelay.api.context import context
from zonerelay.cluster import cluster_state
from zonerelay.store.base import QueueStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _QueueSize:
    """A one-scrape collector holding the store's counts."""

    def __init__(self, stats: QueueStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("zonemta_queue_size", "Deliveries in the queue by type", labels=["type"])
        family.add_metric(["queued"], self.stats.queued)
        family.add_metric(["deferred"], self.stats.deferred)
        yield family


class _Instances:
    """A one-scrape collector of every instance's live state (see `zonerelay queue stats`)."""

    def __init__(self, instances: list[dict[str, Any]]) -> None:
        self.instances = instances

    def collect(self) -> Iterator[Metric]:
        labels = ["instance"]
        up = GaugeMetricFamily("zonerelay_instance_up", "1 while the instance heartbeats", labels=labels)
        age = GaugeMetricFamily(
            "zonerelay_instance_heartbeat_age_seconds", "Seconds since the last heartbeat", labels=labels
        )
        leases = GaugeMetricFamily(
            "zonerelay_instance_leases", "Deliveries leased by the instance now", labels=["instance"]
        )
        for instance in self.instances:
            up.add_metric([instance["id"]], 1 if instance["state"] == "live" else 0)
            if instance["age"] is not None:
                age.add_metric([instance["id"]], instance["age"])
            leases.add_metric([instance["id"]], instance["leases"])
        yield up
        yield age
        yield leases


def exposition(stats: QueueStats, instances: list[dict[str, Any]] | None = None) -> bytes:
    queue = CollectorRegistry(auto_describe=False)
    queue.register(_QueueSize(stats))
    queue.register(_Instances(instances or []))
    directory = metrics.multiprocess_dir()
    if directory:
        summed = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(summed, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(summed) + generate_latest(queue)
    return generate_latest(REGISTRY) + generate_latest(queue)


async def metrics_view(request: web.Request) -> web.Response:
    ctx = context(request)
    stats = await ctx.store.stats()
    instances = await cluster_state(ctx.pipeline.config, ctx.store)
    return web.Response(body=exposition(stats, instances), headers={"Content-Type": CONTENT_TYPE})
