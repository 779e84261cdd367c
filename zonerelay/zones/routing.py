"""Route each recipient of a message to a sending zone.

For now every recipient goes to the "default" zone; the routing rules of the reference
(X-Sending-Zone, routing_headers, sender_domains, recipient_domains) plug in here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from zonerelay.config import Config


class _HeaderView(Protocol):
    def get(self, name: str) -> str | None: ...


class Router:
    def __init__(self, config: Config) -> None:
        self._zones = frozenset(config.zones)

    def route(self, *, headers: _HeaderView, sender: str, interface: str) -> Callable[[str], str]:
        """Return a function from recipient domain to zone name for this message."""
        return lambda domain: "default"
