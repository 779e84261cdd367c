"""What every handler needs, stored once on the application under a typed key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from zonerelay.coord.base import Coordinator
from zonerelay.ingest.pipeline import IngestPipeline
from zonerelay.store.base import QueueStore


@dataclass(frozen=True, slots=True)
class Context:
    pipeline: IngestPipeline
    store: QueueStore
    zones: frozenset[str]  # configured sending zones
    max_size: int  # largest message accepted, bytes
    clock: Callable[[], float]
    coordinator: Coordinator  # parked pairs and slow-downs, shared with the delivery workers


CONTEXT = web.AppKey("zonerelay", Context)


def context(request: web.Request) -> Context:
    return request.app[CONTEXT]
