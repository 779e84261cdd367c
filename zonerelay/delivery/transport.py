"""Deliver one message to the recipients it has at one domain, over SMTP.

Resolves the domain's MX hosts, takes a pooled connection (or opens one, with opportunistic
STARTTLS and a fallback to plain text when the handshake itself fails), streams the body
from the store with the Received header prepended, and turns every reply into a verdict
per recipient. Nothing here touches the store's delivery rows: the worker records verdicts.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from zonerelay.bounces.parking import Slowdown
from zonerelay.config import Config
from zonerelay.config.model import ZoneConfig
from zonerelay.delivery.mx import DnsPermanentError, DnsTemporaryError, MxHost, MxResolver
from zonerelay.delivery.pool import ConnectionPool, PoolKey
from zonerelay.dkim.policy import DkimPolicy
from zonerelay.smtp.client import SmtpClient, insecure_client_context
from zonerelay.smtp.errors import SmtpClientError, TlsHandshakeError
from zonerelay.smtp.replies import Reply
from zonerelay.store.base import Delivery, QueueStore, StoredMessage
from zonerelay.zones.limits import Destination, Limits, destination, slowed, unslowed
from zonerelay.zones.pools import Pools, Source

log = logging.getLogger("zonerelay.delivery")

Kind = Literal["delivered", "deferred", "bounced"]

#: After a failed TLS handshake a receiver is contacted in plain text for this long.
TLS_FAILURE_MEMORY = 3600.0


class DestinationPaused(Exception):
    """The destination is paused after a rate-limit reply: nothing is sent until ``until``."""

    def __init__(self, target: str, until: float) -> None:
        super().__init__(f"{target} paused until {until:.0f}")
        self.target = target
        self.until = until


class _LimitsChanged(Exception):
    """A slow-down began, changed or ended while a delivery waited for a connection: start over
    with the limits now in force (a wait must not let it in under the old ones)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What became of one recipient in one attempt."""

    kind: Kind
    response: str
    details: dict[str, Any] = field(default_factory=dict)


#: what is kept of a reply: it is stored on the delivery row, put in webhooks and DSNs, and
#: classified on the event loop, while a receiver may send 256 lines of 8 KiB (2 MiB); real
#: replies are well under 1 KiB
MAX_RESPONSE = 4096


def clip(text: str) -> str:
    """``text`` cut to MAX_RESPONSE characters, saying how much was left out."""
    if len(text) <= MAX_RESPONSE:
        return text
    return f"{text[:MAX_RESPONSE]} [... {len(text) - MAX_RESPONSE} more characters]"


def verdict_for_reply(reply: Reply, details: dict[str, Any]) -> Verdict:
    if reply.is_positive:
        return Verdict("delivered", clip(str(reply)), details)
    return Verdict("deferred" if reply.is_transient else "bounced", clip(str(reply)), details)


def verdict_for_error(exc: BaseException, details: dict[str, Any]) -> Verdict:
    transient = getattr(exc, "transient", True)
    return Verdict("deferred" if transient else "bounced", describe(exc), details)


def describe(exc: BaseException) -> str:
    reply = getattr(exc, "reply", None)
    if reply is not None:
        return clip(str(reply))
    return clip(str(exc)) or type(exc).__name__


def needs_smtputf8(message: StoredMessage, recipients: list[str]) -> bool:
    """RFC 6531: non-ASCII local parts (or UTF-8 headers declared at submission) need SMTPUTF8."""
    if bool(message.meta.get("smtputf8")):
        return True
    addresses = [message.sender, *recipients]
    return any(not addr.rpartition("@")[0].isascii() for addr in addresses)


def ascii_domain(address: str, domain: str) -> str:
    """The address with its domain in A-label form (no SMTPUTF8 needed for an IDN domain alone)."""
    local, at, _ = address.rpartition("@")
    return f"{local}{at}{domain}" if at else address


class Transport:
    """Per-worker delivery machinery: resolver, connection pool, TLS memory."""

    def __init__(self, config: Config, store: QueueStore, limits: Limits | None = None) -> None:
        self.config = config
        self.store = store
        self.hostname = config.effective_hostname
        if limits is None:  # process-local limits (tools and tests); workers pass shared ones
            from zonerelay.coord.memory import MemoryCoordinator

            limits = Limits(config, MemoryCoordinator(), "local")
        self.limits = limits
        self.pools = Pools(config)
        #: Set by the worker (bounces/): local addresses parked (blocklisted) towards an MX host.
        self.parked_sources: Callable[[str, str], Awaitable[frozenset[str]]] | None = None
        #: Set by the worker (bounces/): the rate-limit slow-down of (zone, target), if any.
        self.slowdown: Callable[[str, str], Awaitable[Slowdown | None]] | None = None
        dns = config.dns
        self.resolver = MxResolver(
            dns.nameservers, dns.timeout, cache=dns.cache, cache_max_ttl=dns.cache_max_ttl
        )
        delivery = config.delivery
        self.pool = ConnectionPool(
            delivery.max_messages_per_connection, delivery.idle_connection_seconds, self.limits.discard
        )
        self.limits.evict_idle = self.pool.evict  # when another process wants our idle slots
        self._tls_context = insecure_client_context()
        self._tls_failed: dict[str, float] = {}
        self.dkim = DkimPolicy(config.dkim)

    async def close(self) -> None:
        await self.pool.close()
        await self.limits.close()

    async def deliver(
        self, zone_name: str, domain: str, message: StoredMessage, deliveries: list[Delivery]
    ) -> dict[tuple[str, str], Verdict]:
        """Try to deliver ``deliveries`` (all of ``message``, all at ``domain``) once."""
        zone = self.config.zones.get(zone_name) or self.config.zones["default"]
        base: dict[str, Any] = {"zone": zone_name, "domain": domain}
        try:
            hosts = await self.resolver.resolve(domain, ignore_ipv6=zone.ignore_ipv6)
        except DnsPermanentError as exc:
            verdict = Verdict("bounced", f"550 {exc}", {**base, "stage": "dns"})
            return {d.key: verdict for d in deliveries}
        except DnsTemporaryError as exc:
            verdict = Verdict("deferred", f"451 {exc}", {**base, "stage": "dns"})
            return {d.key: verdict for d in deliveries}
        dest = destination(self.config, zone_name, domain, [h.hostname for h in hosts])
        if dest.provider is not None:
            base["provider"] = dest.provider  # a rate-limit reply slows the whole provider
        taken: set[str] = set()  # rate tokens already taken for this transaction
        while True:
            dest = await self._slowed(dest)
            # waits; holds no connection meanwhile
            if not await self.limits.take_rate(dest, taken, functools.partial(self._gap_changed, dest)):
                continue
            try:
                return await self._send_via(hosts, zone_name, zone, message, deliveries, base, dest)
            except _LimitsChanged:
                continue

    async def _gap_changed(self, dest: Destination) -> bool:
        return (await self._slowed(dest)).rates != dest.rates

    async def _slowed(self, dest: Destination) -> Destination:
        """``dest`` under the rate-limit slow-down of its target now: fewer connections and a
        gap between transactions; raises DestinationPaused while it is paused."""
        plain = unslowed(dest)
        slow = await self.slowdown(plain.zone, plain.target) if self.slowdown is not None else None
        if slow is None:
            return plain
        if slow.paused(time.time()):
            raise DestinationPaused(plain.target, slow.until)
        if slow.step is None:
            return plain
        limited = slowed(plain, strikes=slow.strikes, cap=slow.step.cap, gap=slow.step.gap)
        await self.limits.retire_stale(limited)
        return limited

    async def _send_via(
        self,
        hosts: list[MxHost],
        zone_name: str,
        zone: ZoneConfig,
        message: StoredMessage,
        deliveries: list[Delivery],
        base: dict[str, Any],
        dest: Destination,
    ) -> dict[tuple[str, str], Verdict]:
        last_error: Verdict | None = None
        for host in hosts:
            for address in host.addresses:
                details = {**base, "mx": host.hostname, "ip": address, "port": zone.port}
                version = 6 if ":" in address else 4
                parked = await self.parked_sources(zone_name, host.hostname) if self.parked_sources else ()
                source = self.pools.choose(zone_name, dest.domain, parked, version=version)
                if source is None:
                    last_error = Verdict(
                        "deferred",
                        f"451 4.4.0 Zone {zone_name} has no usable IPv{version} source address "
                        f"for {dest.domain}",
                        {**details, "stage": "connect"},
                    )
                    continue
                if source.address:  # known even when the connection fails (blocklist parking)
                    details["local_address"] = source.address
                key: PoolKey = (zone_name, source.address, address, zone.port, dest.group)
                outcome = await self._try_host(key, host.hostname, source, dest, message, deliveries, details)
                if isinstance(outcome, dict):
                    return outcome
                connecting, exc = outcome
                last_error = verdict_for_error(exc, {**details, "stage": exc.stage})
                if connecting:  # next address, unless the receiver refused us outright
                    if exc.transient or exc.reply is None or exc.stage == "connect":
                        continue
                elif exc.stage in ("connect", "ehlo", "mail") and exc.transient:
                    continue  # the receiver is not taking mail now: try the next MX
                return {d.key: last_error for d in deliveries}
        if last_error is None:
            last_error = Verdict("deferred", "451 4.4.1 No MX host could be reached", base)
        return {d.key: last_error for d in deliveries}

    async def _try_host(
        self,
        key: PoolKey,
        mx: str,
        source: Source,
        dest: Destination,
        message: StoredMessage,
        deliveries: list[Delivery],
        details: dict[str, Any],
    ) -> dict[tuple[str, str], Verdict] | tuple[bool, SmtpClientError]:
        """One transaction with one receiving address: verdicts, or (while connecting?, the
        error that ended it).

        A pooled connection that the receiver closed while it sat idle fails at MAIL with no
        reply; that says nothing about the receiver, so it is tried once more on a fresh one.
        """
        _zone, _local, address, port, _group = key
        started = time.monotonic()
        for fresh in (False, True):
            try:
                client, reused = await self._connection(
                    key, mx, address, port, source=source, dest=dest, fresh=fresh
                )
            except SmtpClientError as exc:
                return True, exc
            details.update(self._connection_details(client, reused))
            try:
                verdicts = await self._transaction(client, message, deliveries, details)
            except SmtpClientError as exc:
                client.close()
                self.limits.discard(client)
                if reused and exc.stage == "mail" and exc.reply is None:
                    continue
                return False, exc
            await self._finish(key, client, started, verdicts)
            return verdicts
        raise AssertionError("unreachable: a fresh connection is never reused")  # pragma: no cover

    async def _finish(
        self, key: PoolKey, client: SmtpClient, started: float, verdicts: dict[tuple[str, str], Verdict]
    ) -> None:
        duration = round(time.monotonic() - started, 4)
        for verdict in verdicts.values():
            verdict.details["duration"] = duration
        await self.pool.give(key, client)

    @staticmethod
    def _connection_details(client: SmtpClient, reused: bool) -> dict[str, Any]:
        return {
            "local_address": client.local_address,
            "tls": {"version": client.tls_version, "cipher": client.tls_cipher}
            if client.tls_version
            else None,
            "reused": reused,
        }

    async def _connection(
        self,
        key: PoolKey,
        mx: str,
        address: str,
        port: int,
        *,
        source: Source,
        dest: Destination,
        fresh: bool = False,
    ) -> tuple[SmtpClient, bool]:
        # A new connection needs its slots (zone and destination caps) first. While they are
        # taken: reuse a pooled connection as soon as one is free, else close idle pooled
        # connections of ours (to other hosts) that hold the contested slot, else wait.
        delay = 0.05
        while True:
            if (await self._slowed(dest)).slots != dest.slots:
                raise _LimitsChanged  # e.g. a rate-limit reply while this delivery waited
            if not fresh:
                pooled = self.pool.take(key)
                if pooled is not None:
                    return pooled, True
            grant, blocked = await self.limits.try_acquire(dest)
            if grant is not None:
                break
            # one of ours may have come back to the pool while we asked: reuse it, never evict
            # it (a new connection would cost a handshake and restart its throttling pace)
            if not fresh and (pooled := self.pool.take(key)) is not None:
                return pooled, True
            if not await self.pool.evict(self.limits.holding(str(blocked))):
                await self.limits.want(str(blocked))  # other processes may free an idle one
                await self.pool.wait_returned(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
        try:
            client = await self._open(mx, address, port, source)
        except BaseException:
            await self.limits.release_grant(grant)
            raise
        self.limits.attach(client, grant)
        return client, False

    async def _open(self, mx: str, address: str, port: int, source: Source) -> SmtpClient:
        delivery = self.config.delivery

        async def open_connection() -> SmtpClient:
            client = await SmtpClient.connect(
                address,
                port,
                local_address=source.address,
                helo_name=source.name,
                connect_timeout=delivery.connect_timeout,
                command_timeout=delivery.command_timeout,
                data_timeout=delivery.data_timeout,
            )
            try:
                await client.ehlo()
            except BaseException:
                client.close()
                raise
            return client

        client = await open_connection()
        failed_until = self._tls_failed.get(address, 0.0)
        if delivery.starttls and client.capabilities.starttls and failed_until < time.monotonic():
            try:
                await client.starttls(self._tls_context)
            except TlsHandshakeError as exc:
                client.close()
                log.warning(
                    "TLS handshake with %s [%s] failed (%s); retrying in plain text", mx, address, exc
                )
                self._tls_failed[address] = time.monotonic() + TLS_FAILURE_MEMORY
                client = await open_connection()
        return client

    async def _transaction(
        self, client: SmtpClient, message: StoredMessage, deliveries: list[Delivery], details: dict[str, Any]
    ) -> dict[tuple[str, str], Verdict]:
        await self.limits.pace(client, str(details.get("zone", "default")))  # zone throttling
        by_address: dict[str, Delivery] = {}
        for delivery in deliveries:
            by_address[ascii_domain(delivery.recipient, delivery.domain)] = delivery
        recipients = list(by_address)
        utf8 = needs_smtputf8(message, recipients)
        if utf8 and not client.capabilities.smtputf8:
            verdict = Verdict(
                "bounced",
                "553 5.6.7 The receiving server does not support SMTPUTF8, "
                "needed for this address or message",
                {**details, "stage": "mail"},
            )
            await client.rset()
            return {d.key: verdict for d in deliveries}
        received = self._received_header(message, deliveries)
        # DKIM-Signature fields go below our Received and above the headers they sign.
        received += self.dkim.signatures(message.id, message.headers, message.meta)
        size = len(received) + len(message.headers) + message.body_size
        result = await client.send_message(
            message.sender,
            recipients,
            self._body(received, message),
            size=size,
            body8bit=bool(message.meta.get("body8bit")),
            smtputf8=utf8,
        )
        verdicts: dict[tuple[str, str], Verdict] = {}
        for address, delivery in by_address.items():
            rcpt_reply = result.rcpt_replies.get(address)
            if rcpt_reply is None:  # pragma: no cover - the client answers every recipient
                verdicts[delivery.key] = Verdict("deferred", "451 4.4.0 No reply for recipient", details)
            elif not rcpt_reply.is_positive or result.data_reply is None:
                verdicts[delivery.key] = verdict_for_reply(rcpt_reply, {**details, "stage": "rcpt"})
            else:
                verdicts[delivery.key] = verdict_for_reply(result.data_reply, {**details, "stage": "data"})
        return verdicts

    def _received_header(self, message: StoredMessage, deliveries: list[Delivery]) -> bytes:
        meta = message.meta
        helo = meta.get("transhost") or "unknown"
        origin = meta.get("originhost") or "[127.0.0.1]"
        transtype = meta.get("transtype") or "ESMTP"
        ids = f"{message.id}.{deliveries[0].seq}" if len(deliveries) == 1 else message.id
        rcpt = f"\r\n\tfor <{deliveries[0].recipient}>" if len(deliveries) == 1 else ""
        date = email.utils.formatdate(localtime=False, usegmt=True)
        line = (
            f"Received: from {helo} ({origin})\r\n"
            f"\tby {self.hostname} (zonerelay) with {transtype} id {ids}{rcpt};\r\n\t{date}\r\n"
        )
        return line.encode("utf-8", "surrogateescape")

    async def _body(self, received: bytes, message: StoredMessage) -> AsyncIterator[bytes]:
        yield received + message.headers
        async for chunk in self.store.read_body(message.id):
            yield chunk
