"""Reuse of outbound SMTP connections across messages to the same receiver.

Keyed by (zone, local address, remote address, port, limit group): a connection is only ever
reused for the same source IP and the same receiving host, so reputation and greylisting state
stay attached to the right pair, and only for destinations whose connection slots it holds
(the limit group, see zonerelay.zones.limits; "" for unlimited destinations). A connection
goes back to the pool after a completed transaction, leaves it after `max_messages` messages
or `idle_seconds` of rest.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable

from zonerelay import metrics
from zonerelay.smtp.client import SmtpClient

PoolKey = tuple[str, str | None, str, int, str]


class ConnectionPool:
    def __init__(
        self,
        max_messages: int,
        idle_seconds: float,
        on_discard: Callable[[SmtpClient], None] | None = None,
    ) -> None:
        self.max_messages = max_messages
        self.idle_seconds = idle_seconds
        # Told of every connection the pool closes (frees its connection slots).
        self.on_discard = on_discard or (lambda client: None)
        self._idle: dict[PoolKey, list[SmtpClient]] = defaultdict(list)
        self.reuses = 0  # connections taken from the pool instead of opened
        self._returned = asyncio.Event()  # set whenever a connection comes back

    @property
    def size(self) -> int:
        return sum(len(clients) for clients in self._idle.values())

    def take(self, key: PoolKey) -> SmtpClient | None:
        """An idle, still usable connection for ``key``, or None."""
        clients = self._idle.get(key)
        now = time.monotonic()
        while clients:
            client = clients.pop()
            metrics.CONNECTION_POOL_SIZE.set(self.size)
            if client.is_usable and now - client.last_used < self.idle_seconds:
                self.reuses += 1
                metrics.CONNECTION_REUSES.inc()
                return client
            client.close()
            self.on_discard(client)
        return None

    async def give(self, key: PoolKey, client: SmtpClient) -> None:
        """Return a connection after a transaction; retire it when it has done its share."""
        if client.is_usable and client.messages_sent < self.max_messages and self.idle_seconds > 0:
            self._idle[key].append(client)
            self._returned.set()
            self._returned = asyncio.Event()
            metrics.CONNECTION_POOL_SIZE.set(self.size)
        else:
            self.on_discard(client)
            await client.quit()

    async def expire(self) -> None:
        """Close connections idle for longer than ``idle_seconds`` (call periodically)."""
        now = time.monotonic()
        for key in list(self._idle):
            keep = []
            for client in self._idle[key]:
                if client.is_usable and now - client.last_used < self.idle_seconds:
                    keep.append(client)
                else:
                    self.on_discard(client)
                    await client.quit()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        metrics.CONNECTION_POOL_SIZE.set(self.size)

    async def wait_returned(self, seconds: float) -> None:
        """Sleep until a connection is given back (at most ``seconds``): a delivery waiting
        for a connection slot retries at once instead of polling."""
        returned = asyncio.ensure_future(self._returned.wait())
        await asyncio.wait([returned], timeout=seconds)
        returned.cancel()

    async def evict(self, match: Callable[[SmtpClient], bool]) -> int:
        """Close idle connections for which ``match`` is true (to free their connection
        slots for a delivery elsewhere); returns how many were closed."""
        victims: list[SmtpClient] = []
        for key in list(self._idle):  # detach them all before the first await
            clients = self._idle[key]
            victims += [c for c in clients if match(c)]
            clients[:] = [c for c in clients if not match(c)]
            if not clients:
                del self._idle[key]
        metrics.CONNECTION_POOL_SIZE.set(self.size)
        for client in victims:
            self.on_discard(client)
            await client.quit()
        return len(victims)

    async def close(self) -> None:
        clients = [c for group in self._idle.values() for c in group]
        self._idle.clear()
        metrics.CONNECTION_POOL_SIZE.set(0)
        for client in clients:
            self.on_discard(client)
        await asyncio.gather(*(c.quit() for c in clients), return_exceptions=True)
