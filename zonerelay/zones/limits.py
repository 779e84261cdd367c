"""Connection caps, per-connection throttling and per-destination rates of sending zones.

Caps and rates must hold for the whole instance (every worker process) and, with Redis, for
the whole cluster, so they live in the Coordinator:

- a *connection* takes one slot of ``zone:<zone>`` (zone ``connections``) and of each
  destination key (``dest:<zone>:<domain>`` for ``domain_config.<domain>.max_connections``,
  ``prov:<zone>:<provider>`` for a provider's) when it opens, keeps them while it lives —
  idle in the pool included, since the receiver still sees it — and releases them when it
  closes. Slots are renewed while held and expire by themselves after a crash.
- a *message* takes one token of ``rate:<zone>:<domain>`` / ``rate:<zone>:prov:<provider>``
  before its connection is taken (so a long wait never sits on an open connection).
- ``throttling`` paces each connection locally: a connection is one process's object.
- a destination slowed down after a rate-limit reply (zonerelay.bounces.parking) gets one more
  slot, ``slowed:<zone>:<target>:x<strikes>`` with its reduced cap, and a gap between its
  transactions, ``rate:<zone>:slowed:<target>`` (one per gap). The strike count is in the slot
  key, so a new strike starts a new limit group: pooled connections opened before it are not
  reused, and this process closes its idle ones at once (``retire_stale``).

A delivery that cannot get a slot, or a token due within HOLD_AFTER seconds, waits, keeping
its lease (the worker renews the leases of everything in flight): waiting is not an attempt
and never an error, and it costs no store writes. A token further away raises RateExhausted:
the worker gives the delivery back to the queue until its turn, so that a backlog for one
slow destination does not fill the worker's `concurrency` places and starve the others.
A process that waits for a slot parks ``want:<key>``; the processes holding that
key close their pooled connections idle for a second or more, so that idle connections in one
worker never starve another for the whole idle_connection_seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from zonerelay.config import Config
from zonerelay.coord.base import CoordinationUnavailable, Coordinator
from zonerelay.smtp.client import SmtpClient

log = logging.getLogger("zonerelay.zones")

#: A slot not renewed for this long is free again (a killed worker's connections).
SLOT_TTL = 15.0
RENEW_EVERY = SLOT_TTL / 3
#: Longest pause between two tries for a slot or a rate token.
MAX_POLL = 1.0
#: A rate token further away than this is not waited for in memory (RateExhausted).
HOLD_AFTER = 2.0
#: A process waiting for a slot parks ``want:<key>`` this long; others holding the key close
#: connections of theirs idle for at least WANT_GRACE, checking every WANT_CHECK seconds.
WANT_PREFIX = "want:"
WANT_TTL = 3.0
WANT_GRACE = 1.0
WANT_CHECK = 1.0


class RateExhausted(Exception):
    """The next token of rate ``key`` (``count`` per ``period`` seconds) is ``wait`` seconds
    away, more than HOLD_AFTER: the delivery should leave its worker place and come back then."""

    def __init__(self, key: str, count: int, period: float, wait: float) -> None:
        super().__init__(f"{key}: next token in {wait:.1f}s")
        self.key, self.count, self.period, self.wait = key, count, period, wait


@dataclass(frozen=True, slots=True)
class Destination:
    """The limits one delivery is subject to, resolved from zone, domain and MX hosts."""

    zone: str
    domain: str
    provider: str | None
    slots: tuple[tuple[str, int], ...]  # (key, limit), zone first
    rates: tuple[tuple[str, int, float], ...]  # (key, count, period)

    @property
    def target(self) -> str:
        return slow_target(self.domain, self.provider)

    @property
    def group(self) -> str:
        """Connections are pooled per limit group, so a reused connection already holds the
        right destination slots (unlimited domains all share the group "")."""
        return "|".join(key for key, _ in self.slots if not key.startswith("zone:"))


@dataclass(slots=True)
class Grant:
    holder: str
    keys: list[str] = field(default_factory=list)
    zone: str = ""
    target: str = ""  # the destination the connection was opened for


PROVIDER_TARGET = "provider="
SLOWED_PREFIX = "slowed:"


def slow_target(domain: str, provider: str | None) -> str:
    """What a rate-limit slow-down is keyed by: the provider when the MX hosts fall under a
    ``[providers.*]`` rollup (its throttle covers all its domains), else the domain. No colon,
    so ``slow:<zone>:<target>`` splits at its last one."""
    return f"{PROVIDER_TARGET}{provider}" if provider else domain


def base_connections(config: Config, zone: str, target: str) -> int:
    """The connection cap a slow-down of ``target`` steps down from: the tightest of the
    zone's ``connections`` and the provider's (or domain's) ``max_connections``; with none
    configured, ``[delivery] destination_concurrency`` (what one worker opens to a domain)."""
    zone_config = config.zones.get(zone) or config.zones["default"]
    caps = [zone_config.connections]
    if target.startswith(PROVIDER_TARGET):
        provider = config.providers.get(target[len(PROVIDER_TARGET) :])
        caps.append(provider.max_connections if provider is not None else None)
    elif (own := zone_config.domain_config.get(target)) is not None:
        caps.append(own.max_connections)
    return min((c for c in caps if c is not None), default=config.delivery.destination_concurrency)


def unslowed(dest: Destination) -> Destination:
    """``dest`` without the limits of a slow-down."""
    slots = tuple(s for s in dest.slots if not s[0].startswith(SLOWED_PREFIX))
    rates = tuple(r for r in dest.rates if f":{SLOWED_PREFIX}" not in r[0])
    return Destination(dest.zone, dest.domain, dest.provider, slots, rates)


def slowed(dest: Destination, *, strikes: int, cap: int, gap: float) -> Destination:
    """``dest`` with the reduced connection cap and the gap of a slow-down added."""
    slots = (*dest.slots, (f"{SLOWED_PREFIX}{dest.zone}:{dest.target}:x{strikes}", cap))
    gap_key = f"rate:{dest.zone}:{SLOWED_PREFIX}{dest.target}"
    rates = (*dest.rates, (gap_key, 1, gap)) if gap > 0 else dest.rates
    return Destination(dest.zone, dest.domain, dest.provider, slots, rates)


def provider_for(config: Config, mx_hosts: Iterable[str]) -> str | None:
    """The first provider (config order) one of whose suffixes ends an MX host name."""
    hosts = [h.rstrip(".").lower() for h in mx_hosts]
    for name, provider in config.providers.items():
        for suffix in provider.mx_suffixes:
            if any(h == suffix or h.endswith("." + suffix) for h in hosts):
                return name
    return None


def destination(config: Config, zone: str, domain: str, mx_hosts: Iterable[str]) -> Destination:
    zone_config = config.zones.get(zone) or config.zones["default"]
    slots: list[tuple[str, int]] = []
    rates: list[tuple[str, int, float]] = []
    if zone_config.connections is not None:
        slots.append((f"zone:{zone}", zone_config.connections))
    own = zone_config.domain_config.get(domain)
    if own is not None:
        if own.max_connections is not None:
            slots.append((f"dest:{zone}:{domain}", own.max_connections))
        if own.rate is not None:
            rates.append((f"rate:{zone}:{domain}", *own.rate))
    provider = provider_for(config, mx_hosts) if config.providers else None
    if provider is not None:
        limits = config.providers[provider]
        if limits.max_connections is not None:
            slots.append((f"prov:{zone}:{provider}", limits.max_connections))
        if limits.rate is not None:
            rates.append((f"rate:{zone}:prov:{provider}", *limits.rate))
    return Destination(zone, domain, provider, tuple(slots), tuple(rates))


class Limits:
    """One worker process's side of the zone limits."""

    def __init__(self, config: Config, coordinator: Coordinator, owner: str) -> None:
        self.config = config
        self.coordinator = coordinator
        self.owner = owner
        self._held: dict[SmtpClient, Grant] = {}
        self._next_send: dict[SmtpClient, float] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._wanted: dict[str, float] = {}
        self._retired: set[str] = set()  # slowed slot keys whose stale connections were closed
        #: Closes this process's idle pooled connections matching a predicate (pool.evict).
        self.evict_idle: Callable[[Callable[[SmtpClient], bool]], Awaitable[int]] | None = None

    # -- connection slots ----------------------------------------------------------------

    async def try_acquire(self, dest: Destination) -> tuple[Grant | None, str | None]:
        """One try at a slot of each of ``dest``'s keys: (grant, None), or (None, the full key).
        The caller first looks for a pooled connection, may evict idle ones holding the full
        key, else says it ``want``s the key and waits a little before trying again."""
        grant = Grant(f"{self.owner}/{uuid.uuid4().hex[:12]}", zone=dest.zone, target=dest.target)
        if not dest.slots:
            return grant, None
        self._ensure_renewer()
        blocked = await self._try(dest, grant)
        return (None, blocked) if blocked is not None else (grant, None)

    async def want(self, key: str) -> None:
        """Say that this process waits for a slot of ``key``: other processes close their idle
        pooled connections holding one (see ``_yield_wanted``). At most once a second."""
        now = time.monotonic()
        if now - self._wanted.get(key, 0.0) < 1.0:
            return
        self._wanted[key] = now
        with contextlib.suppress(CoordinationUnavailable):
            await self.coordinator.park(WANT_PREFIX + key, time.time() + WANT_TTL, self.owner)

    async def _try(self, dest: Destination, grant: Grant) -> str | None:
        """Take every slot or none; returns the key that was full, or None on success."""
        now = time.time()
        for key, limit in dest.slots:
            try:
                ok = await self.coordinator.acquire_slot(key, limit, grant.holder, SLOT_TTL, now)
            except CoordinationUnavailable as exc:
                log.warning("coordination unavailable (%s); waiting for slot %s", exc, key)
                ok = False
            if not ok:
                await self.release_grant(grant)
                return key
            grant.keys.append(key)
        return None

    async def retire_stale(self, dest: Destination) -> None:
        """Once per slow-down strike of ``dest``: close this process's idle connections to it
        that do not hold its current slowed slot (opened before the strike, so the receiver
        sees fewer connections now, not after idle_connection_seconds)."""
        key = next((k for k, _ in dest.slots if k.startswith(SLOWED_PREFIX)), None)
        if key is None or key in self._retired or self.evict_idle is None:
            return
        if len(self._retired) > 4096:  # keys of long-over strikes; forgetting one costs an evict
            self._retired.clear()
        self._retired.add(key)

        def stale(client: SmtpClient) -> bool:
            grant = self._held.get(client)
            return (grant is not None and grant.zone == dest.zone and grant.target == dest.target
                    and key not in grant.keys)  # fmt: skip

        if closed := await self.evict_idle(stale):
            log.info("closed %d idle connections to %s/%s after a rate-limit reply", closed, dest.zone,
                     dest.target)  # fmt: skip

    def attach(self, client: SmtpClient, grant: Grant) -> None:
        """The connection now owns the slots; they are released when it is ``discard``-ed."""
        self._held[client] = grant

    def holding(self, key: str) -> Callable[[SmtpClient], bool]:
        """A predicate: does a connection hold a slot of ``key``?"""

        def holds(client: SmtpClient) -> bool:
            grant = self._held.get(client)
            return grant is not None and key in grant.keys

        return holds

    async def release_grant(self, grant: Grant) -> None:
        keys, grant.keys = grant.keys, []
        for key in keys:
            with contextlib.suppress(CoordinationUnavailable):
                await self.coordinator.release_slot(key, grant.holder)

    def discard(self, client: SmtpClient) -> None:
        """A connection was closed (or is being closed): free its slots soon."""
        self._next_send.pop(client, None)
        grant = self._held.pop(client, None)
        if grant is not None and grant.keys:
            task = asyncio.get_running_loop().create_task(self.release_grant(grant))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _ensure_renewer(self) -> None:
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(WANT_CHECK)
            for client in [c for c in self._held if not c.is_usable]:
                self.discard(client)  # a connection closed on a path that did not tell us
            pairs = [(key, grant.holder) for grant in self._held.values() for key in grant.keys]
            if not pairs:
                continue
            try:
                await self._yield_wanted({key for key, _ in pairs})
                if time.monotonic() - renewed >= RENEW_EVERY:
                    renewed = time.monotonic()
                    await self.coordinator.renew_slots(pairs, SLOT_TTL, time.time())
            except CoordinationUnavailable as exc:
                log.warning("could not renew connection slots: %s", exc)

    async def _yield_wanted(self, held: set[str]) -> None:
        """Close our idle pooled connections (idle for WANT_GRACE at least) that hold a slot
        another process is waiting for, so that idle connections here never starve
        deliveries there for the whole idle_connection_seconds."""
        if self.evict_idle is None:
            return
        wanted = await self.coordinator.parked(time.time(), WANT_PREFIX)
        keys = {p.key[len(WANT_PREFIX) :] for p in wanted if p.reason != self.owner} & held
        if not keys:
            return
        now = time.monotonic()

        def idle_holder(client: SmtpClient) -> bool:
            grant = self._held.get(client)
            return grant is not None and now - client.last_used >= WANT_GRACE and bool(keys & set(grant.keys))

        if await self.evict_idle(idle_holder):
            log.debug("closed idle connections holding %s for another process", sorted(keys))

    # -- rates and throttling -------------------------------------------------------------

    async def take_rate(
        self,
        dest: Destination,
        taken: set[str] | None = None,
        changed: Callable[[], Awaitable[bool]] | None = None,
    ) -> bool:
        """Wait for one message token of each of ``dest``'s rates not in ``taken`` (and note
        each one there). False, with the rest not taken, when ``changed()`` says, while
        waiting, that ``dest``'s limits no longer apply (a slow-down's gap ended or changed);
        RateExhausted when a token is more than HOLD_AFTER seconds away."""
        taken = set() if taken is None else taken
        for key, count, period in dest.rates:
            while key not in taken:
                try:
                    wait = await self.coordinator.rate_take(key, count, period, time.time())
                except CoordinationUnavailable as exc:
                    log.warning("coordination unavailable (%s); waiting for rate %s", exc, key)
                    wait = MAX_POLL
                if wait <= 0:
                    taken.add(key)
                    break
                if wait > HOLD_AFTER:
                    raise RateExhausted(key, count, period, wait)
                await asyncio.sleep(min(wait, MAX_POLL) + random.random() * 0.01)
                if changed is not None and await changed():
                    return False
        return True

    async def pace(self, client: SmtpClient, zone: str) -> None:
        """Per-connection throttling: space messages on ``client`` by period/count."""
        zone_config = self.config.zones.get(zone) or self.config.zones["default"]
        if zone_config.throttling is None:
            return
        count, period = zone_config.throttling
        now = time.monotonic()
        at = self._next_send.get(client, now)
        if at > now:
            await asyncio.sleep(at - now)
        self._next_send[client] = max(at, now) + period / count

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        for client in list(self._held):
            self.discard(client)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
