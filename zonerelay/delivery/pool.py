"""Reuse of outbound SMTP connections across messages to the same receiver.

Keyed by (zone, local address, remote address, port): a connection is only ever reused for
the same source IP and the same receiving host, so reputation and greylisting state stay
attached to the right pair. A connection goes back to the pool after a completed
transaction, leaves it after `max_messages` messages or `idle_seconds` of rest.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from zonerelay.smtp.client import SmtpClient

PoolKey = tuple[str, str | None, str, int]


class ConnectionPool:
    def __init__(self, max_messages: int, idle_seconds: float) -> None:
        self.max_messages = max_messages
        self.idle_seconds = idle_seconds
        self._idle: dict[PoolKey, list[SmtpClient]] = defaultdict(list)
        self.reuses = 0  # connections taken from the pool instead of opened

    @property
    def size(self) -> int:
        return sum(len(clients) for clients in self._idle.values())

    def take(self, key: PoolKey) -> SmtpClient | None:
        """An idle, still usable connection for ``key``, or None."""
        clients = self._idle.get(key)
        now = time.monotonic()
        while clients:
            client = clients.pop()
            if client.is_usable and now - client.last_used < self.idle_seconds:
                self.reuses += 1
                return client
            client.close()
        return None

    async def give(self, key: PoolKey, client: SmtpClient) -> None:
        """Return a connection after a transaction; retire it when it has done its share."""
        if client.is_usable and client.messages_sent < self.max_messages and self.idle_seconds > 0:
            self._idle[key].append(client)
        else:
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
                    await client.quit()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    async def close(self) -> None:
        clients = [c for group in self._idle.values() for c in group]
        self._idle.clear()
        await asyncio.gather(*(c.quit() for c in clients), return_exceptions=True)
