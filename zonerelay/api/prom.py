"""GET /metrics: the Prometheus text exposition.

Counters and pool gauges come from ``zonerelay.metrics`` (summed over the worker processes'
files in multiprocess mode); ``zonemta_queue_size`` is read from the store at scrape time,
so it always equals what the queue holds.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from zonerelay import metrics
from zonerelay.api.context import context
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


def exposition(stats: QueueStats) -> bytes:
    queue = CollectorRegistry(auto_describe=False)
    queue.register(_QueueSize(stats))
    directory = metrics.multiprocess_dir()
    if directory:
        summed = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(summed, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(summed) + generate_latest(queue)
    return generate_latest(REGISTRY) + generate_latest(queue)


async def metrics_view(request: web.Request) -> web.Response:
    store = context(request).store
    stats = await store.stats()
    return web.Response(body=exposition(stats), headers={"Content-Type": CONTENT_TYPE})
