"""Route each recipient of a message to a sending zone, with ZoneMTA's priority.

1. ``X-Sending-Zone: <zone>`` — only from interfaces that allow routing headers; an unknown
   zone there is refused at submission rather than silently sent through "default";
2. ``routing_headers`` — the first zone (in config order) with one matching header value;
3. ``sender_domains`` — the domain of the From: address;
4. ``recipient_domains`` — per recipient;
5. ``"default"``.

X-Sending-Zone is an instruction to us, not part of the message: the pipeline removes it from
the stored headers whatever the interface, so it never reaches a receiver (nor a DKIM
signature made at send time).
"""

from __future__ import annotations

from collections.abc import Callable

from zonerelay.config import Config
from zonerelay.ingest.headers import Headers, sender_domain
from zonerelay.smtp.replies import Reply

SENDING_ZONE_HEADER = "x-sending-zone"

#: Interfaces that are not SMTP interfaces (no ``[smtp.<name>]`` table) and may route by
#: header unless their own config says otherwise: ZoneMTA's defaults.
TRUSTED_INTERFACES = frozenset({"api", "bounce"})


class UnknownZone(Exception):
    """X-Sending-Zone names a zone that is not configured; ``reply`` is the refusal."""

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self.reply = Reply(550, "5.6.0", f"Unknown sending zone {zone!r} in X-Sending-Zone")
        super().__init__(str(self.reply))


class Router:
    """Routing rules compiled from the config once; ``route`` is called per message."""

    def __init__(self, config: Config) -> None:
        self._zones = frozenset(config.zones)
        self._by_header = [(name, z.routing_headers) for name, z in config.zones.items() if z.routing_headers]
        self._by_sender = {d: name for name, z in config.zones.items() for d in z.sender_domains}
        self._by_recipient = {d: name for name, z in config.zones.items() for d in z.recipient_domains}
        self._allow = {name: iface.allow_routing_headers for name, iface in config.smtp.items()}

    def allows_routing_header(self, interface: str) -> bool:
        return self._allow.get(interface, interface in TRUSTED_INTERFACES)

    def route(self, *, headers: Headers, sender: str, interface: str) -> Callable[[str], str]:
        """Return a function from recipient domain to zone name for this message.

        Raises UnknownZone when an allowed X-Sending-Zone names a zone that does not exist.
        ``sender`` (the envelope) is not a routing input in ZoneMTA; sender_domains match the
        From: header.
        """
        zone = self._message_zone(headers, interface)
        if zone is not None:
            return lambda domain: zone
        by_recipient = self._by_recipient
        return lambda domain: by_recipient.get(domain.rstrip(".").lower(), "default")

    def _message_zone(self, headers: Headers, interface: str) -> str | None:
        """The zone chosen for the whole message by rules 1-3, or None."""
        if self.allows_routing_header(interface):
            wanted = (headers.get(SENDING_ZONE_HEADER) or "").strip()
            if wanted:
                if wanted not in self._zones:
                    raise UnknownZone(wanted)
                return wanted
        for name, wanted_headers in self._by_header:
            for header, value in wanted_headers.items():
                got = headers.get(header)
                if got is not None and got.strip() == value:
                    return name
        if self._by_sender:
            domain = sender_domain(headers)
            if domain is not None and domain in self._by_sender:
                return self._by_sender[domain]
        return None
