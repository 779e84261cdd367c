"""What delivery does about a classified failure: park blocklisted source IPs, slow down
destinations that said "too fast", and pick the next attempt time.

Parking goes through the Coordinator, so every worker process (and, with Redis, every
instance) sees it. Keys:

- ``park:<local ip>:<mx host>``  the receiver ``mx host`` refused ``local ip`` as blocklisted;
- ``slow:<zone>:<target>``       the destination asked us to slow down; ``<target>`` is the
  domain, or ``provider=<name>`` when its MX hosts fall under a ``[providers.<name>]`` rollup
  (one throttle of Microsoft 365 slows all its domains). The reason starts with
  ``x<strikes> until=<end of the pause>``.

A strike pauses the destination (``rate_limit_pause``, doubling per strike up to
``rate_limit_max_pause``); then it runs slowed: each strike halved its connection cap and
doubled the gap between new transactions, and each ``rate_limit_recovery`` without a new strike
takes one strike back, until it runs at full speed again (``slow_step``). Replies that arrive
during the pause come from transactions started before it and are not new strikes.

``next_attempt`` and ``slow_step`` are pure and tested as tables; the rest is a thin layer
over the Coordinator.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
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
#: Longest gap between new transactions to a slowed destination: at least one a minute goes
#: out, so a destination that recovered sooner than we assume is noticed.
MAX_GAP = 60.0
#: Strikes beyond this deepen nothing (the cap is 1 and the gap MAX_GAP long before) and would
#: only stretch the recovery: 16 strikes take 16 recovery periods to undo.
MAX_STRIKES = 16


def park_key(local_address: str, mx: str) -> str:
    return f"{PARK_PREFIX}{local_address}:{mx.lower().rstrip('.')}"


def split_park_key(key: str) -> tuple[str, str]:
    """(local ip, mx host) of a park key; the IP may be IPv6 (colons), the host has none."""
    local, _, mx = key[len(PARK_PREFIX) :].rpartition(":")
    return local, mx


def slow_key(zone: str, target: str) -> str:
    """``target``: a domain, or ``provider=<name>`` (zonerelay.zones.limits.slow_target)."""
    return f"{SLOW_PREFIX}{zone}:{target}"


def split_slow_key(key: str) -> tuple[str, str]:
    """(zone, target) of a slow key; the target has no colon."""
    zone, _, target = key[len(SLOW_PREFIX) :].rpartition(":")
    return zone, target


def slow_pause(strikes: int, first: float, cap: float) -> float:
    """Pause after the ``strikes``-th "slow down" in a row: first, 2*first, 4*first ... cap."""
    return float(min(cap, first * 2 ** max(0, strikes - 1)))


@dataclass(frozen=True, slots=True)
class SlowStep:
    """How a slowed destination may be contacted now."""

    level: int  # strikes not yet taken back by recovery (>= 1)
    cap: int  # concurrent connections
    gap: float  # seconds between new transactions (0: none)


def slow_step(strikes: int, *, base: int, elapsed: float, recovery: float, gap: float) -> SlowStep | None:
    """Pure: the limits ``elapsed`` seconds after the pause of the ``strikes``-th strike ended.

    Each strike halves the connection cap from ``base`` (at least 1) and doubles ``gap`` (at
    most MAX_GAP); each whole ``recovery`` period since the pause ended takes one strike back.
    None: recovered (or ``recovery`` is 0: slow-downs only pause).
    """
    if recovery <= 0:
        return None
    level = min(strikes, MAX_STRIKES) - max(0, int(elapsed // recovery))
    if level <= 0:
        return None
    spaced = min(MAX_GAP, gap * 2 ** (level - 1)) if gap > 0 else 0.0
    return SlowStep(level, max(1, base >> level), spaced)


@dataclass(frozen=True, slots=True)
class Slowdown:
    """A destination's slow-down as read from its ``slow:`` entry."""

    zone: str
    target: str
    strikes: int
    until: float  # end of the pause
    step: SlowStep | None  # None: recovered (only the pause applied)

    def paused(self, now: float) -> bool:
        return now < self.until

    def recovered_at(self, recovery: float) -> float:
        return self.until + min(self.strikes, MAX_STRIKES) * recovery


def read_slowdown(entry: Parked, *, base: int, now: float, recovery: float, gap: float) -> Slowdown | None:
    """The state of one ``slow:`` entry at ``now`` (None: not a slow entry, or over)."""
    if not entry.key.startswith(SLOW_PREFIX):
        return None
    strikes_m, until_m = _STRIKES.match(entry.reason), _UNTIL.search(entry.reason)
    strikes = int(strikes_m.group(1)) if strikes_m else 1
    until = float(until_m.group(1)) if until_m else entry.until
    zone, target = split_slow_key(entry.key)
    step = slow_step(strikes, base=base, elapsed=now - until, recovery=recovery, gap=gap)
    if now >= until and step is None:
        return None
    return Slowdown(zone, target, strikes, until, step)


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


def _describe(step: SlowStep) -> str:
    gap = f", one new transaction per {step.gap:g}s" if step.gap else ""
    return f"at most {step.cap} connection{'s' if step.cap != 1 else ''}{gap}"


class Parking:
    """Shared parking of (local IP, MX) pairs and slow-downs of destinations."""

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        blacklist_ttl: float,
        pause: float,
        max_pause: float,
        recovery: float = 0.0,
        gap: float = 0.0,
        base: Callable[[str, str], int] = lambda zone, target: 1,
    ) -> None:
        self.coordinator = coordinator
        self.blacklist_ttl = blacklist_ttl
        self.pause = pause
        self.max_pause = max_pause
        self.recovery = recovery
        self.gap = gap
        #: (zone, target) -> the connection cap a slow-down steps down from (zones.limits).
        self.base = base
        self._snapshot: tuple[float, list[Parked]] | None = None
        self._levels: dict[str, int] = {}  # last level logged per slow key (this process)

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

    async def slow_down(self, zone: str, target: str, reason: str, now: float) -> float:
        """A rate-limit reply from ``target``: a new strike, unless it is still paused (the reply
        then comes from a transaction started before the pause). Returns the end of the pause."""
        key = slow_key(zone, target)
        strikes = 1
        for entry in await self._parked(now, key):
            if entry.key != key:
                continue
            current = self._read(entry, now)
            if current is not None and current.paused(now):
                return current.until  # same episode
            if m := _STRIKES.match(entry.reason):
                strikes = min(int(m.group(1)) + 1, MAX_STRIKES)
        pause = slow_pause(strikes, self.pause, self.max_pause)
        until = now + pause
        # kept until recovered, and at least twice as long as the pause, so that a repeat
        # soon after it ends is a further strike
        keep = max(now + 2 * pause, until + strikes * self.recovery)
        self._snapshot = None
        self._levels[key] = strikes
        try:
            await self.coordinator.park(key, keep, f"x{strikes} until={until:.3f} {reason}"[:500])
        except CoordinationUnavailable as exc:
            log.warning("could not slow down %s: %s", key, exc)
        base = self.base(zone, target)
        step = slow_step(strikes, base=base, elapsed=0, recovery=self.recovery, gap=self.gap)
        then = f", then {_describe(step)}, one step back every {self.recovery:g}s" if step else ""
        log.warning("rate limited: slowing down %s/%s for %.0fs (strike %d)%s: %s",
                    zone, target, pause, strikes, then, reason)  # fmt: skip
        return until

    async def slowdown(self, zone: str, target: str, now: float) -> Slowdown | None:
        """The slow-down of ``target`` in effect at ``now``, if any; logs each recovery step
        (once per process)."""
        key = slow_key(zone, target)
        found = None
        for entry in await self._parked(now, key):
            if entry.key == key:
                found = self._read(entry, now)
        level = found.step.level if found is not None and found.step is not None else 0
        if level < self._levels.get(key, level):
            if found is None or found.step is None:
                log.info("rate limit recovered: %s/%s back to full speed", zone, target)
            else:
                log.info("rate limit recovery: %s/%s now %s", zone, target, _describe(found.step))
        if found is None:
            self._levels.pop(key, None)
        else:
            self._levels[key] = level
        return found

    async def slowed_until(self, zone: str, target: str, now: float) -> float | None:
        found = await self.slowdown(zone, target, now)
        return found.until if found is not None and found.paused(now) else None

    async def slowed(self, now: float) -> list[Slowdown]:
        """Every destination paused or slowed at ``now``."""
        entries = await self._parked(now, SLOW_PREFIX)
        return [found for entry in entries if (found := self._read(entry, now)) is not None]

    def _read(self, entry: Parked, now: float) -> Slowdown | None:
        zone, target = split_slow_key(entry.key)
        return read_slowdown(
            entry, base=self.base(zone, target), now=now, recovery=self.recovery, gap=self.gap
        )

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
