"""What delivery does about a classified failure: park blocklisted source IPs, slow down
destinations that said "too fast", and pick the next attempt time.

Parking goes through the Coordinator, so every worker process (and, with Redis, every
instance) sees it. Keys:

- ``park:<local ip>:<mx host>``  the receiver ``mx host`` refused ``local ip`` as blocklisted;
- ``slow:<zone>:<domain>``       the destination asked us to slow down; the reason carries how
  many times in a row, so the pause doubles while it repeats and resets once it has expired.

``next_attempt`` is pure and tested as a table; the rest is a thin layer over the Coordinator.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from zonerelay.bounces.classify import Classification
from zonerelay.coord.base import CoordinationUnavailable, Coordinator, Parked

log = logging.getLogger("zonerelay.bounces")

PARK_PREFIX = "park:"
SLOW_PREFIX = "slow:"
#: How stale a process's view of other processes' parked entries may be.
PARKED_CACHE_SECONDS = 1.0
_STRIKES = re.compile(r"^x(\d+) ")
_UNTIL = re.compile(r"\buntil=(\d+(?:\.\d+)?)")


def park_key(local_address: str, mx: str) -> str:
    return f"{PARK_PREFIX}{local_address}:{mx.lower().rstrip('.')}"


def split_park_key(key: str) -> tuple[str, str]:
    """(local ip, mx host) of a park key; the IP may be IPv6 (colons), the host has none."""
    local, _, mx = key[len(PARK_PREFIX) :].rpartition(":")
    return local, mx


def slow_key(zone: str, domain: str) -> str:
    return f"{SLOW_PREFIX}{zone}:{domain}"


def slow_pause(strikes: int, first: float, cap: float) -> float:
    """Pause after the ``strikes``-th "slow down" in a row: first, 2*first, 4*first ... cap."""
    return float(min(cap, first * 2 ** max(0, strikes - 1)))


@dataclass(frozen=True, slots=True)
class Plan:
    """When to try a failed delivery again (None: bounce now, it is final)."""

    next_attempt: float | None
    reason: str  # "schedule", "other-source", "parked", "slowed", "final", "expired"


def next_attempt(
    classification: Classification,
    *,
    scheduled: float | None,
    now: float,
    other_source: bool,
    resume_at: float | None,
) -> Plan:
    """Pure: combine the classification with the retry schedule.

    ``scheduled`` is the back-off schedule's answer (None past the maximum queue time);
    ``other_source`` says whether the zone's pool has an address not parked for this MX;
    ``resume_at`` is when the park / slow-down that applies ends.
    """
    if classification.action == "reject":
        return Plan(None, "final")
    if scheduled is None:
        return Plan(None, "expired")
    if classification.category == "blacklist":
        if other_source:
            return Plan(now, "other-source")  # at once, from another address of the pool
        if resume_at is not None:
            return Plan(max(now, min(scheduled, resume_at)), "parked")
    if classification.category == "rate_limit" and resume_at is not None:
        return Plan(max(now, min(scheduled, resume_at)), "slowed")
    return Plan(scheduled, "schedule")


class Parking:
    """Shared parking of (local IP, MX) pairs and slow-downs of destinations."""

    def __init__(
        self, coordinator: Coordinator, *, blacklist_ttl: float, pause: float, max_pause: float
    ) -> None:
        self.coordinator = coordinator
        self.blacklist_ttl = blacklist_ttl
        self.pause = pause
        self.max_pause = max_pause
        self._snapshot: tuple[float, list[Parked]] | None = None

    async def park(self, local_address: str, mx: str, reason: str, now: float) -> float:
        until = now + self.blacklist_ttl
        self._snapshot = None
        try:
            await self.coordinator.park(park_key(local_address, mx), until, reason[:500])
        except CoordinationUnavailable as exc:
            log.warning("could not park %s towards %s: %s", local_address, mx, exc)
        log.warning("blocklisted: parked local address %s towards %s until %.0f: %s",
                    local_address, mx, until, reason)  # fmt: skip
        return until

    async def parked_sources(self, mx: str, now: float) -> frozenset[str]:
        """Local addresses parked towards ``mx`` right now."""
        entries = await self._parked(now, PARK_PREFIX)
        wanted = mx.lower().rstrip(".")
        return frozenset(local for local, host in (split_park_key(p.key) for p in entries) if host == wanted)

    async def park_ends(self, mx: str, now: float) -> float | None:
        entries = await self._parked(now, PARK_PREFIX)
        wanted = mx.lower().rstrip(".")
        ends = [p.until for p in entries if split_park_key(p.key)[1] == wanted]
        return min(ends) if ends else None

    async def slow_down(self, zone: str, domain: str, reason: str, now: float) -> float:
        key = slow_key(zone, domain)
        current = await self._parked(now, key)
        strikes = 1
        for entry in current:
            if entry.key == key and (m := _STRIKES.match(entry.reason)):
                strikes = int(m.group(1)) + 1
        pause = slow_pause(strikes, self.pause, self.max_pause)
        until = now + pause
        self._snapshot = None
        try:
            # kept twice as long as the pause, so a repeat soon after it ends still doubles
            await self.coordinator.park(key, now + 2 * pause, f"x{strikes} until={until:.3f} {reason}"[:500])
        except CoordinationUnavailable as exc:
            log.warning("could not slow down %s: %s", key, exc)
        log.warning("rate limited: slowing down %s/%s for %.0fs (strike %d): %s",
                    zone, domain, pause, strikes, reason)  # fmt: skip
        return until

    async def slowed_until(self, zone: str, domain: str, now: float) -> float | None:
        key = slow_key(zone, domain)
        for entry in await self._parked(now, key):
            if entry.key == key and (m := _UNTIL.search(entry.reason)) and float(m.group(1)) > now:
                return float(m.group(1))
        return None

    async def _parked(self, now: float, prefix: str) -> list[Parked]:
        """Parked entries under ``prefix``, from a snapshot at most PARKED_CACHE_SECONDS old.

        Every delivery asks, so asking the shared coordinator each time cost a round trip
        per message (14 % of a worker's time in the profile). This process's own parks drop
        the snapshot at once; other processes' parks are seen within a second.
        """
        mono = time.monotonic()
        if self._snapshot is None or mono - self._snapshot[0] > PARKED_CACHE_SECONDS:
            try:
                entries = await self.coordinator.parked(now, "")
            except CoordinationUnavailable as exc:
                log.warning("could not read parked entries: %s", exc)
                return []
            self._snapshot = (mono, entries)
        return [p for p in self._snapshot[1] if p.key.startswith(prefix) and p.until > now]
