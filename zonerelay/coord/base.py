"""The coordination interface: everything that must hold across processes and instances.

Connection caps per zone and per destination, message rates and throttles, blocklist parking
of (local IP, MX) pairs and instance heartbeats go through this one interface, with two
implementations: local (one instance; shared by its worker processes through a file in
data_dir) and Redis (a whole cluster). Every piece of state carries an expiry, so whatever
a crashed process or instance held comes back by itself.

Keys are plain strings chosen by the callers, e.g. ``zone:default``,
``dest:default:gmail.com``, ``rate:default:example.com``, ``park:127.0.0.2:mx.example.com``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass


class CoordinationUnavailable(Exception):
    """The shared coordinator cannot be reached; callers fall back to conservative local limits."""


@dataclass(frozen=True, slots=True)
class Parked:
    key: str
    until: float  # unix time
    reason: str


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    instance_id: str
    last_seen: float  # unix time of the last heartbeat
    info: dict[str, object]


class Coordinator(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- slots: at most ``limit`` holders of ``key`` at once --------------------------------
    @abc.abstractmethod
    async def acquire_slot(self, key: str, limit: int, holder: str, ttl: float, now: float) -> bool:
        """Take one of ``limit`` slots of ``key`` for ``holder`` (a unique token, e.g. one per
        connection). Slots older than ``ttl`` seconds without renewal are free again."""

    @abc.abstractmethod
    async def release_slot(self, key: str, holder: str) -> None: ...

    @abc.abstractmethod
    async def renew_slots(self, keys_holders: list[tuple[str, str]], ttl: float, now: float) -> None:
        """Keep the given slots alive for another ``ttl`` seconds."""

    @abc.abstractmethod
    async def slot_count(self, key: str, now: float) -> int: ...

    # -- rates: at most ``count`` events per ``period`` seconds for ``key`` ---------------------
    @abc.abstractmethod
    async def rate_take(self, key: str, count: int, period: float, now: float) -> float:
        """Reserve one event; returns 0.0 when it may happen now, else the seconds to wait
        before asking again (nothing is reserved then)."""

    # -- parking (e.g. a local IP blocklisted by one MX) ------------------------------------
    @abc.abstractmethod
    async def park(self, key: str, until: float, reason: str) -> None: ...

    @abc.abstractmethod
    async def unpark(self, key: str) -> bool: ...

    @abc.abstractmethod
    async def parked(self, now: float, prefix: str = "") -> list[Parked]:
        """Entries still parked at ``now`` whose key starts with ``prefix``."""

    # -- instances ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def heartbeat(self, instance_id: str, info: dict[str, object], ttl: float, now: float) -> None: ...

    @abc.abstractmethod
    async def instances(self, now: float) -> list[InstanceInfo]:
        """Instances whose last heartbeat is younger than the ttl they gave."""
