"""Instances of one cluster: heartbeats, and the sweep that frees a dead instance's leases.

Every instance's supervisor heartbeats through the coordinator every ``HEARTBEAT_INTERVAL``
seconds with a time to live of ``HEARTBEAT_TTL``. Lease owners are ``instance/wN/pid``, so
the store knows which instance holds what (``lease_holders``). The sweep, run by every
supervisor, releases the live leases of owners whose instance has no live heartbeat: a
``kill -9``-ed or powered-off instance's deliveries become claimable by the others within
about HEARTBEAT_TTL + HEARTBEAT_INTERVAL seconds instead of after ``lease_seconds``.

The sweep only runs when the coordinator is shared (Redis) and answering: with the local
coordinator every other instance would look dead, and while Redis is away nobody can tell.
An instance that is alive but cut off from Redis for longer than the TTL loses its leases to
the others; its deliveries in flight may then be sent twice (at-least-once), never lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from zonerelay.config import Config
from zonerelay.coord import CoordinationUnavailable, Coordinator, FallbackCoordinator, open_coordinator
from zonerelay.store.base import QueueStore, StoreError

log = logging.getLogger("zonerelay.cluster")

HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_TTL = 10.0


def instance_of(owner: str) -> str:
    """The instance part of a lease owner ``instance/wN/pid``."""
    return owner.split("/", 1)[0]


class ClusterMember:
    """Heartbeats for this instance and sweeps the leases of dead ones."""

    def __init__(
        self, config: Config, store: QueueStore, coordinator: Coordinator, info: dict[str, object]
    ) -> None:
        self.instance_id = config.effective_instance_id
        self.shared = bool(config.redis.url)
        self.store = store
        self.coordinator = coordinator
        self.info = {"pid": os.getpid(), "started": time.time(), **info}

    async def beat(self) -> None:
        await self.coordinator.heartbeat(self.instance_id, self.info, HEARTBEAT_TTL, time.time())

    async def sweep(self) -> int:
        """Release leases held by instances without a live heartbeat; returns how many."""
        if not self.shared:
            return 0
        if isinstance(self.coordinator, FallbackCoordinator) and self.coordinator.degraded:
            return 0
        now = time.time()
        live = {i.instance_id for i in await self.coordinator.instances(now)} | {self.instance_id}
        if isinstance(self.coordinator, FallbackCoordinator) and self.coordinator.degraded:
            return 0  # the census itself failed
        released = 0
        for owner in await self.store.lease_holders(now):
            if instance_of(owner) in live:
                continue
            n = await self.store.release(owner)
            released += n
            if n:
                log.warning(
                    "instance %s has not sent a heartbeat for %.0fs: released %d leases of %s "
                    "so that other workers deliver them",
                    instance_of(owner),
                    HEARTBEAT_TTL,
                    n,
                    owner,
                )
        return released

    async def run(self) -> None:
        """Heartbeat and sweep forever (cancel to stop)."""
        while True:
            try:
                await self.beat()
                await self.sweep()
            except (CoordinationUnavailable, StoreError) as exc:
                log.warning("heartbeat/sweep failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_INTERVAL)


async def cluster_state(config: Config, store: QueueStore) -> list[dict[str, Any]]:
    """Each instance: live heartbeat or not, when it was last seen, leases it holds now."""
    now = time.time()
    coordinator = open_coordinator(config, processes=1)
    await coordinator.open()
    try:
        instances = await coordinator.instances(now)
    except CoordinationUnavailable:
        instances = []
    finally:
        await coordinator.close()
    leases: dict[str, int] = {}
    for owner, n in (await store.lease_holders(now)).items():
        leases[instance_of(owner)] = leases.get(instance_of(owner), 0) + n
    out: list[dict[str, Any]] = [
        {
            "id": i.instance_id,
            "state": "live",
            "last_seen": i.last_seen,
            "age": round(now - i.last_seen, 3),
            "leases": leases.pop(i.instance_id, 0),
            "info": i.info,
        }
        for i in instances
    ]
    out.extend(
        {"id": iid, "state": "silent", "last_seen": None, "age": None, "leases": n, "info": {}}
        for iid, n in sorted(leases.items())
    )
    return out
