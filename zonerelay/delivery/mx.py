"""MX resolution for outbound delivery (RFC 5321 5.1, RFC 7505 null MX).

Turns a recipient domain into an ordered list of hosts with addresses, and turns every DNS
outcome into either a ``DnsPermanentError`` (bounce: 5.1.2 / 5.1.10) or a
``DnsTemporaryError`` (defer: 4.4.3), so delivery never inspects dnspython exceptions. Answers
are cached per (name, type) for their TTL (capped), because a busy queue asks the same
question thousands of times a minute.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
import idna

from zonerelay.config.model import split_host_port

# How long a definitive "no such domain / no such record" answer is remembered; short,
# because a domain that is being set up should start receiving mail soon.
NEGATIVE_TTL = 60


class DnsError(Exception):
    """A DNS lookup did not produce usable mail exchangers."""

    transient: bool = True

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


class DnsPermanentError(DnsError):
    """The domain cannot receive mail (NXDOMAIN, null MX, no addresses): bounce."""

    transient = False


class DnsTemporaryError(DnsError):
    """DNS did not answer properly (SERVFAIL, timeout): try again later."""

    transient = True


@dataclass(frozen=True, slots=True)
class MxHost:
    priority: int
    hostname: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Records:
    """Result of one query: the record texts, or none (NXDOMAIN when ``nxdomain``)."""

    values: tuple[str, ...]
    nxdomain: bool = False


class MxResolver:
    """Resolve recipient domains to MX hosts with addresses, with a TTL-honouring cache."""

    def __init__(
        self,
        nameservers: list[str],
        timeout: float,
        cache: bool = True,
        cache_max_ttl: int = 3600,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            servers: list[str | dns.nameserver.Nameserver] = []
            for entry in nameservers:
                host, port = split_host_port(entry, 53)
                servers.append(dns.nameserver.Do53Nameserver(host, port))
            resolver.nameservers = servers
        else:
            resolver = dns.asyncresolver.Resolver()
        resolver.timeout = timeout
        resolver.lifetime = timeout
        resolver.cache = None  # we cache ourselves, with our own caps and negative caching
        self._resolver = resolver
        self._timeout = timeout
        self._cache_enabled = cache
        self._cache_max_ttl = cache_max_ttl
        self._clock = clock
        self._cache: dict[tuple[str, int], tuple[float, _Records]] = {}

    def clear_cache(self) -> None:
        self._cache.clear()

    async def resolve(self, domain: str, *, ignore_ipv6: bool) -> list[MxHost]:
        """Hosts to try for ``domain``, best first, each with IPv4 addresses before IPv6."""
        literal = _domain_literal(domain)
        if literal is not None:
            if ignore_ipv6 and ":" in literal:
                raise DnsPermanentError("5.4.4", f"{domain} is an IPv6 literal but IPv6 is disabled")
            return [MxHost(0, domain, (literal,))]
        name = _a_label(domain)

        mx = await self._query(name, dns.rdatatype.MX)
        if mx.nxdomain:
            raise DnsPermanentError("5.1.2", f"domain {name} does not exist")
        if not mx.values:
            # RFC 5321 5.1: no MX records, so the domain itself is the implicit MX.
            exchanges = [(0, name)]
        else:
            parsed = [_parse_mx(value) for value in mx.values]
            if all(host == "" for _, host in parsed):
                raise DnsPermanentError("5.1.10", f"domain {name} accepts no mail (null MX)")
            # A "." among real MX records is a misconfiguration; RFC 7505 says ignore it.
            exchanges = [(prio, host) for prio, host in parsed if host]
            random.shuffle(exchanges)
            exchanges.sort(key=lambda item: item[0])  # stable: random order within a priority

        results = await asyncio.gather(
            *(self._addresses(host, ignore_ipv6) for _, host in exchanges), return_exceptions=True
        )
        hosts: list[MxHost] = []
        temporary: DnsTemporaryError | None = None
        for (priority, host), result in zip(exchanges, results, strict=True):
            if isinstance(result, DnsTemporaryError):
                temporary = temporary or result
            elif isinstance(result, BaseException):
                raise result
            elif result:
                hosts.append(MxHost(priority, host, result))
        if hosts:
            return hosts
        if temporary is not None:
            raise temporary
        what = "IPv4 address" if ignore_ipv6 else "address"
        if not mx.values:
            raise DnsPermanentError("5.1.2", f"domain {name} has no MX and no {what}")
        raise DnsPermanentError("5.1.2", f"no MX host of {name} has an {what}")

    async def _addresses(self, host: str, ignore_ipv6: bool) -> tuple[str, ...]:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:  # an MX pointing at an IP address: wrong, but common enough to honour
            return () if ignore_ipv6 and ip.version == 6 else (str(ip),)
        if ignore_ipv6:
            return (await self._query(host, dns.rdatatype.A)).values
        a, aaaa = await asyncio.gather(
            self._query(host, dns.rdatatype.A), self._query(host, dns.rdatatype.AAAA)
        )
        return a.values + aaaa.values

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Records:
        key = (name, int(rdtype))
        now = self._clock()
        if self._cache_enabled:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        try:
            answer = await self._resolver.resolve(name + ".", rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return self._store(key, _Records((), nxdomain=True), NEGATIVE_TTL)
        except dns.resolver.NoAnswer:
            return self._store(key, _Records(()), NEGATIVE_TTL)
        except dns.exception.Timeout:
            raise DnsTemporaryError("4.4.3", f"DNS timeout looking up {rdtype.name} of {name}") from None
        except dns.resolver.NoNameservers as exc:
            raise DnsTemporaryError("4.4.3", f"no server answered {rdtype.name} of {name}: {exc}") from None
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsTemporaryError("4.4.3", f"DNS error looking up {rdtype.name} of {name}: {exc}") from None
        values = tuple(rdata.to_text() for rdata in answer)
        ttl = answer.rrset.ttl if answer.rrset is not None else 0
        return self._store(key, _Records(values), ttl)

    def _store(self, key: tuple[str, int], records: _Records, ttl: int) -> _Records:
        ttl = min(ttl, self._cache_max_ttl)
        if self._cache_enabled and ttl > 0:
            self._cache[key] = (self._clock() + ttl, records)
            if len(self._cache) > 100_000:
                self._evict()
        return records

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[key]


def _parse_mx(text: str) -> tuple[int, str]:
    priority, _, exchange = text.partition(" ")
    return int(priority), exchange.rstrip(".").lower()


def _domain_literal(domain: str) -> str | None:
    """The address inside "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 4.1.3), else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inner[5:]))
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        raise DnsPermanentError("5.1.2", f"bad address literal {domain}") from None


def _a_label(domain: str) -> str:
    """The ASCII (A-label) form of a domain, lower-cased and without a trailing dot."""
    domain = domain.strip().rstrip(".")
    if not domain:
        raise DnsPermanentError("5.1.2", "empty domain")
    try:
        if domain.isascii():
            ascii_name = domain.lower()
            if ascii_name.startswith("xn--") or ".xn--" in ascii_name:
                idna.decode(ascii_name)  # reject malformed punycode early
        else:
            ascii_name = idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise DnsPermanentError("5.1.2", f"invalid domain {domain!r}: {exc}") from None
    return ascii_name
