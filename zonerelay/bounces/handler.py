"""The worker's side of bounce handling: classify a failed verdict, act on it, plan the retry.

One instance per worker process. ``decide`` turns a transport verdict into the status, next
attempt and event details the store records: every non-2xx gets a category and an action;
``blacklist`` parks (local IP, MX host) and retries at once from another pool address;
``rate_limit`` pauses the destination, then runs it slowed until it recovers; a deferral past
the maximum queue time bounces with its last category.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from zonerelay import metrics
from zonerelay.bounces.classify import Classification, Classifier
from zonerelay.bounces.parking import Parking, next_attempt
from zonerelay.config import Config
from zonerelay.coord.base import Coordinator
from zonerelay.delivery.retry import RetryPolicy
from zonerelay.store.base import Delivery, DeliveryStatus
from zonerelay.zones.limits import base_connections, slow_target
from zonerelay.zones.pools import Pools

log = logging.getLogger("zonerelay.bounces")


def classification_details(c: Classification) -> dict[str, Any]:
    """Event detail fields (``status`` is the event's own field, hence ``enhanced_status``)."""
    return {"category": c.category, "action": c.action, "code": c.code, "enhanced_status": c.status,
            "reason": c.message}  # fmt: skip


class BounceHandler:
    def __init__(self, config: Config, coordinator: Coordinator | None, pools: Pools | None = None) -> None:
        if coordinator is None:  # tools and tests: parking local to this process
            from zonerelay.coord.memory import MemoryCoordinator

            coordinator = MemoryCoordinator()
        bounces = config.bounces
        self.classifier = Classifier.from_file(bounces.rules_file or None)
        self.parking = Parking(
            coordinator,
            blacklist_ttl=bounces.blacklist_ttl,
            pause=bounces.rate_limit_pause,
            max_pause=bounces.rate_limit_max_pause,
            recovery=bounces.rate_limit_recovery,
            gap=bounces.rate_limit_gap,
            base=functools.partial(base_connections, config),  # the cap slow-downs step down from
        )
        self.pools = pools or Pools(config)
        self._model_ready = False

    async def warm_up(self) -> None:
        """Load the learned classifier (or fit it, a few seconds of CPU, if no process on this
        machine has yet) off the event loop, once, when the first failure needs it: a worker
        that never sees one never pays for it."""
        if self.classifier.learned and not self._model_ready:
            from zonerelay.bounces.learned import shipped_model

            await asyncio.to_thread(shipped_model)
            self._model_ready = True

    async def parked_sources(self, zone: str, mx: str) -> frozenset[str]:
        """Transport hook: local addresses not to use towards ``mx`` (blocklisted there)."""
        return await self.parking.parked_sources(mx, time.time())

    async def decide(
        self, delivery: Delivery, response: str, details: dict[str, Any], now: float, retry: RetryPolicy
    ) -> tuple[DeliveryStatus, float | None, str]:
        """Status, next attempt and response to record for a failed attempt; fills ``details``."""
        found = self.classifier.match(response)
        if found.needs_model:  # rule-matched replies never wait for training
            await self.warm_up()
            c = await asyncio.to_thread(self.classifier.classify, found)  # ~3 ms of model
        else:
            c = self.classifier.classify(found)
        details.update(classification_details(c))
        scheduled = retry.next_attempt(deferrals=delivery.attempts + 1, queued_at=delivery.created, now=now)
        other_source, resume_at = False, None
        mx, local = details.get("mx"), details.get("local_address")
        if c.action == "defer" and c.category == "blacklist" and mx and local:
            resume_at = await self.parking.park(str(local), str(mx), response, now)
            if self.pools.has_pool(delivery.zone):
                parked = await self.parking.parked_sources(str(mx), now)
                source = self.pools.choose(delivery.zone, delivery.domain, parked)
                other_source = source is not None and source.address not in parked
            if not other_source:
                resume_at = await self.parking.park_ends(str(mx), now) or resume_at
        elif c.action == "defer" and c.category == "rate_limit":
            target = slow_target(delivery.domain, details.get("provider"))  # provider under a rollup
            resume_at = await self.parking.slow_down(delivery.zone, target, response, now)
        plan = next_attempt(c, scheduled=scheduled, now=now, other_source=other_source, resume_at=resume_at)
        details["retry"] = plan.reason
        metrics.BOUNCES.labels(category=c.category, action=c.action, zone=delivery.zone).inc()
        if plan.next_attempt is not None:
            return DeliveryStatus.DEFERRED, plan.next_attempt, response
        if plan.reason == "expired":
            details["expired"] = True
            response = f"{response} (gave up after {delivery.attempts + 1} attempts)"
        return DeliveryStatus.BOUNCED, None, response

    async def slowed_until(self, zone: str, domain: str) -> float | None:
        return await self.parking.slowed_until(zone, domain, time.time())
