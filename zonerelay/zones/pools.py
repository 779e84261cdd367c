"""Choose the local source address (and EHLO name) a zone uses towards a recipient domain.

Weighted rendezvous (highest-random-weight) hashing: every pool address gets a score from a
hash of (domain, address) scaled by its weight, and the best score wins. So

- an address carries its ``ratio`` share of the recipient domains (and so of the traffic);
- the choice for a domain is stable while the pool is unchanged (a greylisted retry comes
  from the same IP), and removing or excluding one address only moves the domains that
  address had — the rest keep theirs;
- ``exclude`` (an address disabled for the domain, or parked after a blocklist reply) yields
  the next-best address, as stable as the first.

Pure: no I/O, no clock, no randomness — unit-tested over thousands of domains.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from zonerelay.config import Config
from zonerelay.config.model import PoolAddressConfig

_TWO_64 = float(2**64)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a connection comes from: the local address (None: the OS picks) and EHLO name."""

    address: str | None
    name: str


@dataclass(frozen=True, slots=True)
class PoolEntry:
    address: str
    name: str
    weight: float
    version: int


def weights(pool: Iterable[PoolAddressConfig], hostname: str) -> list[PoolEntry]:
    """Turn ratios into weights: a given ratio is a share of the zone; entries without one
    share what is left evenly (ZoneMTA's rule). Duplicate (address, name) entries add up."""
    entries = list(pool)
    given = sum(e.ratio for e in entries if e.ratio is not None)
    unrated = sum(1 for e in entries if e.ratio is None)
    rest = max(0.0, 1.0 - given) / unrated if unrated else 0.0
    merged: dict[tuple[str, str], float] = {}
    for entry in entries:
        key = (entry.address, entry.name or hostname)
        merged[key] = merged.get(key, 0.0) + (entry.ratio if entry.ratio is not None else rest)
    return [
        PoolEntry(address, name, weight, ipaddress.ip_address(address).version)
        for (address, name), weight in merged.items()
        if weight > 0
    ]


def score(domain: str, entry: PoolEntry) -> float:
    """Weighted rendezvous score: -w / ln(u) with u uniform in (0, 1) from a hash."""
    digest = hashlib.blake2b(f"{domain}\0{entry.address}\0{entry.name}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 0.5) / _TWO_64
    return -entry.weight / math.log(u)


def ranked(
    entries: Iterable[PoolEntry], domain: str, *, version: int = 4, exclude: Collection[str] = ()
) -> list[PoolEntry]:
    """Entries of IP ``version`` not in ``exclude``, best first for ``domain``."""
    usable = [e for e in entries if e.version == version and e.address not in exclude]
    return sorted(usable, key=lambda e: score(domain, e), reverse=True)


class Pools:
    """The pools of every zone, ready to answer ``choose`` (one per worker process)."""

    def __init__(self, config: Config) -> None:
        self._hostname = config.effective_hostname
        self._zones = config.zones
        self._entries = {
            name: weights(zone.pool, self._hostname) if zone.pool is not None else None
            for name, zone in config.zones.items()
        }

    def has_pool(self, zone: str) -> bool:
        return self._entries.get(zone) is not None

    def choose(
        self, zone: str, domain: str, exclude: Collection[str] = frozenset(), *, version: int = 4
    ) -> Source | None:
        """The source for ``domain`` in ``zone`` avoiding ``exclude`` and the addresses disabled
        for the domain; None when none is left (or IPv6 is asked of a zone that ignores it)."""
        config = self._zones.get(zone) or self._zones["default"]
        if version == 6 and config.ignore_ipv6:
            return None
        entries = self._entries.get(zone, self._entries["default"])
        if entries is None:
            return Source(None, self._hostname)
        disabled = config.disabled_for(domain)
        best = ranked(entries, domain, version=version, exclude=set(exclude) | disabled)
        return Source(best[0].address, best[0].name) if best else None
