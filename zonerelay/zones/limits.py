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

A delivery that cannot get a slot or token waits, keeping its lease (the worker renews the
leases of everything in flight): waiting is not an attempt and never an error, and it costs
no store writes. (The price: a waiting delivery occupies one of its worker's `concurrency`
places.) A process that waits for a slot parks ``want:<key>``; the processes holding that
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
#: A process waiting for a slot parks ``want:<key>`` this long; others holding the key close
#: connections of theirs idle for at least WANT_GRACE, checking every WANT_CHECK seconds.
WANT_PREFIX = "want:"
WANT_TTL = 3.0
WANT_GRACE = 1.0
WANT_CHECK = 1.0


@dataclass(frozen=True, slots=True)
class Destination:
    """The limits one delivery is subject to, resolved from zone, domain and MX hosts."""

    zone: str
    domain: str
    provider: str | None
    slots: tuple[tuple[str, int], ...]  # (key, limit), zone first
    rates: tuple[tuple[str, int, float], ...]  # (key, count, period)

    @property
    def group(self) -> str:
        """Connections are pooled per limit group, so a reused connection already holds the
        right destination slots (unlimited domains all share the group "")."""
        return "|".join(key for key, _ in self.slots if not key.startswith("zone:"))


@dataclass(slots=True)
class Grant:
    holder: str
    keys: list[str] = field(default_factory=list)


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
        #: Closes this process's idle pooled connections matching a predicate (pool.evict).
        self.evict_idle: Callable[[Callable[[SmtpClient], bool]], Awaitable[int]] | None = None

    # -- connection slots ----------------------------------------------------------------

    async def try_acquire(self, dest: Destination) -> tuple[Grant | None, str | None]:
        """One try at a slot of each of ``dest``'s keys: (grant, None), or (None, the full key).
        The caller first looks for a pooled connection, may evict idle ones holding the full
        key, else says it ``want``s the key and waits a little before trying again."""
        grant = Grant(f"{self.owner}/{uuid.uuid4().hex[:12]}")
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

    async def take_rate(self, dest: Destination) -> None:
        """Wait for one message token of each of ``dest``'s rates."""
        for key, count, period in dest.rates:
            while True:
                try:
                    wait = await self.coordinator.rate_take(key, count, period, time.time())
                except CoordinationUnavailable as exc:
                    log.warning("coordination unavailable (%s); waiting for rate %s", exc, key)
                    wait = MAX_POLL
                if wait <= 0:
                    break
                await asyncio.sleep(min(wait, MAX_POLL) + random.random() * 0.01)

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
