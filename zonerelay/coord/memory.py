"""A process-local coordinator held in dicts.

It holds only within one process, so it is never the configured coordinator: the
FallbackCoordinator uses it while Redis is unreachable (with limits divided so that the
sum over all processes stays under the cluster-wide limit), and tests use it as a
reference implementation of the contract.
"""

from __future__ import annotations

import bisect
from collections import deque

from zonerelay.coord.base import Coordinator, InstanceInfo, Parked


class MemoryCoordinator(Coordinator):
    def __init__(self) -> None:
        self._slots: dict[str, dict[str, float]] = {}
        self._rates: dict[str, deque[float]] = {}
        self._parked: dict[str, Parked] = {}
        self._instances: dict[str, tuple[float, float, dict[str, object]]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _live(self, key: str, now: float) -> dict[str, float]:
        holders = self._slots.setdefault(key, {})
        for holder in [h for h, expires in holders.items() if expires <= now]:
            del holders[holder]
        return holders

    async def acquire_slot(self, key: str, limit: int, holder: str, ttl: float, now: float) -> bool:
        holders = self._live(key, now)
        if holder not in holders and len(holders) >= limit:
            return False
        holders[holder] = now + ttl
        return True

    async def release_slot(self, key: str, holder: str) -> None:
        holders = self._slots.get(key)
        if holders is not None:
            holders.pop(holder, None)
            if not holders:
                del self._slots[key]

    async def renew_slots(self, keys_holders: list[tuple[str, str]], ttl: float, now: float) -> None:
        for key, holder in keys_holders:
            holders = self._slots.get(key)
            if holders is not None and holders.get(holder, 0.0) > now:
                holders[holder] = now + ttl

    async def slot_count(self, key: str, now: float) -> int:
        return len(self._live(key, now))

    async def rate_take(self, key: str, count: int, period: float, now: float) -> float:
        events = self._rates.setdefault(key, deque())
        # events are kept sorted; callers may pass slightly out-of-order clocks
        while events and events[0] <= now - period:
            events.popleft()
        if len(events) < count:
            if not events or events[-1] <= now:
                events.append(now)
            else:
                ordered = list(events)
                bisect.insort(ordered, now)
                self._rates[key] = deque(ordered)
            return 0.0
        return max(events[len(events) - count] + period - now, 1e-6)

    async def park(self, key: str, until: float, reason: str) -> None:
        self._parked[key] = Parked(key, until, reason)

    async def unpark(self, key: str) -> bool:
        return self._parked.pop(key, None) is not None

    async def parked(self, now: float, prefix: str = "") -> list[Parked]:
        for key in [k for k, p in self._parked.items() if p.until <= now]:
            del self._parked[key]
        return sorted((p for k, p in self._parked.items() if k.startswith(prefix)), key=lambda p: p.key)

    async def heartbeat(self, instance_id: str, info: dict[str, object], ttl: float, now: float) -> None:
        self._instances[instance_id] = (now, now + ttl, dict(info))

    async def instances(self, now: float) -> list[InstanceInfo]:
        return sorted(
            (
                InstanceInfo(i, seen, info)
                for i, (seen, expires, info) in self._instances.items()
                if expires > now
            ),
            key=lambda x: x.instance_id,
        )
