"""Coordination: state that must hold across worker processes and instances (limits, parking).

``open_coordinator(config)`` picks the implementation: the local one (a SQLite file in
data_dir shared by this instance's processes) unless ``[redis] url`` is set, in which case
a RedisCoordinator wrapped in a FallbackCoordinator, so that a Redis outage slows delivery
down instead of stopping it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from zonerelay.coord.base import CoordinationUnavailable, Coordinator, InstanceInfo, Parked
from zonerelay.coord.memory import MemoryCoordinator

if TYPE_CHECKING:
    from zonerelay.config import Config

__all__ = [
    "CoordinationUnavailable",
    "Coordinator",
    "FallbackCoordinator",
    "InstanceInfo",
    "MemoryCoordinator",
    "Parked",
    "open_coordinator",
]

log = logging.getLogger("zonerelay.coord")

#: While degraded, ask the shared coordinator again at most this often (seconds).
RETRY_INTERVAL = 5.0
#: How often a process refreshes the number of live instances its fallback share divides by.
CENSUS_INTERVAL = 30.0


def open_coordinator(config: Config, *, processes: int | None = None) -> Coordinator:
    """The configured coordinator, not yet opened: ``await coord.open()`` before use.

    ``processes`` is how many processes of this instance use coordination at once (the
    delivery workers); the fallback divides limits by it as well as by the instances.
    """
    if config.redis.url:
        from zonerelay.coord.redis import RedisCoordinator

        primary = RedisCoordinator(config.redis.url, prefix=config.redis.prefix, timeout=config.redis.timeout)
        return FallbackCoordinator(primary, processes=processes or max(1, config.effective_workers))
    from zonerelay.coord.local import LocalCoordinator

    return LocalCoordinator(config.queue.data_dir / "coord.db")


class FallbackCoordinator(Coordinator):
    """A shared coordinator that degrades to conservative process-local limits.

    When the shared coordinator raises CoordinationUnavailable, calls go to a process-local
    MemoryCoordinator whose limits are divided by the number of instances last seen times
    ``processes`` (at least 1 each), so that the whole cluster stays under its limits while
    nobody can count for it. It logs once when this starts and once when the shared
    coordinator answers again (it is asked again every ``retry_interval`` seconds).
    Parking and heartbeats made meanwhile are kept locally only.
    """

    def __init__(
        self, primary: Coordinator, *, processes: int = 1, retry_interval: float = RETRY_INTERVAL
    ) -> None:
        self.primary = primary
        self.local = MemoryCoordinator()
        self.processes = max(1, processes)
        self.retry_interval = retry_interval
        self.known_instances = 1
        self._degraded_since: float | None = None
        self._next_try = 0.0
        self._next_census = 0.0

    @property
    def degraded(self) -> bool:
        """True while the shared coordinator is unreachable and local limits apply."""
        return self._degraded_since is not None

    def _share(self, limit: int) -> int:
        return max(1, limit // (self.known_instances * self.processes))

    def _use_primary(self) -> bool:
        return self._degraded_since is None or time.monotonic() >= self._next_try

    def _failed(self, exc: CoordinationUnavailable) -> None:
        self._next_try = time.monotonic() + self.retry_interval
        if self._degraded_since is None:
            self._degraded_since = time.monotonic()
            log.error(
                "COORDINATION UNAVAILABLE (%s): cluster-wide limits are suspended; this process now "
                "applies 1/%d of each limit on its own until the coordinator answers again",
                exc,
                self.known_instances * self.processes,
            )

    async def _recovered(self) -> None:
        if self._degraded_since is not None:
            log.warning(
                "coordination restored after %.0fs: cluster-wide limits apply again",
                time.monotonic() - self._degraded_since,
            )
            self._degraded_since = None
        if time.monotonic() >= self._next_census:
            # processes that never ask for instances still need the count for their share
            self._next_census = time.monotonic() + CENSUS_INTERVAL
            try:
                self.known_instances = max(1, len(await self.primary.instances(time.time())))
            except CoordinationUnavailable as exc:
                self._failed(exc)

    async def open(self) -> None:
        try:
            await self.primary.open()
        except CoordinationUnavailable as exc:
            self._failed(exc)

    async def close(self) -> None:
        await self.primary.close()

    async def acquire_slot(self, key: str, limit: int, holder: str, ttl: float, now: float) -> bool:
        if self._use_primary():
            try:
                result = await self.primary.acquire_slot(key, limit, holder, ttl, now)
            except CoordinationUnavailable as exc:
                self._failed(exc)
            else:
                await self._recovered()
                return result
        return await self.local.acquire_slot(key, self._share(limit), holder, ttl, now)

    async def release_slot(self, key: str, holder: str) -> None:
        await self.local.release_slot(key, holder)
        if self._use_primary():
            try:
                await self.primary.release_slot(key, holder)
            except CoordinationUnavailable as exc:
                self._failed(exc)  # the slot expires there by itself
            else:
                await self._recovered()

    async def renew_slots(self, keys_holders: list[tuple[str, str]], ttl: float, now: float) -> None:
        await self.local.renew_slots(keys_holders, ttl, now)
        if self._use_primary():
            try:
                await self.primary.renew_slots(keys_holders, ttl, now)
            except CoordinationUnavailable as exc:
                self._failed(exc)
            else:
                await self._recovered()

    async def slot_count(self, key: str, now: float) -> int:
        if self._use_primary():
            try:
                result = await self.primary.slot_count(key, now)
            except CoordinationUnavailable as exc:
                self._failed(exc)
            else:
                await self._recovered()
                return result
        return await self.local.slot_count(key, now)

    async def rate_take(self, key: str, count: int, period: float, now: float) -> float:
        if self._use_primary():
            try:
                result = await self.primary.rate_take(key, count, period, now)
            except CoordinationUnavailable as exc:
                self._failed(exc)
            else:
                await self._recovered()
                return result
        return await self.local.rate_take(key, self._share(count), period, now)

    async def park(self, key: str, until: float, reason: str) -> None:
        if self._use_primary():
            try:
                await self.primary.park(key, until, reason)
            except CoordinationUnavailable as exc:
                self._failed(exc)
            else:
                await self._recovered()
                return
        await self.local.park(key, until, reason)

    async def unpark(self, key: str) -> bool:
        removed = await self.local.unpark(key)
        if self._use_primary():
            try:
                removed = await self.primary.unpark(key) or removed
            except CoordinationUnavailable as exc:
                self._failed(exc)
            else:
                await self._recovered()
        return removed

    async def parked(self, now: float, prefix: str = "") -> list[Parked]:
        local = await self.local.parked(now, prefix)  # parked while the coordinator was away
        if self._use_primary():
            try:
                shared = await self.primary.parked(now, prefix)
            except CoordinationUnavailable as exc:
                self._failed(exc)
            else:
                await self._recovered()
                merged = {p.key: p for p in local}
                merged.update({p.key: p for p in shared})
                return sorted(merged.values(), key=lambda p: p.key)
        return local

    async def heartbeat(self, instance_id: str, info: dict[str, object], ttl: float, now: float) -> None:
        await self.local.heartbeat(instance_id, info, ttl, now)
        if self._use_primary():
            try:
                await self.primary.heartbeat(instance_id, info, ttl, now)
            except CoordinationUnavailable as exc:
                self._failed(exc)
            else:
                await self._recovered()

    async def instances(self, now: float) -> list[InstanceInfo]:
        if self._use_primary():
            try:
                result = await self.primary.instances(now)
            except CoordinationUnavailable as exc:
                self._failed(exc)
            else:
                self.known_instances = max(1, len(result))
                self._next_census = time.monotonic() + CENSUS_INTERVAL
                await self._recovered()
                return result
        return await self.local.instances(now)
