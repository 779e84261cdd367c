"""Events the SMTP server core hands to its adapter, as small immutable values.

Two kinds (h11 style): *informational* events report something the core already answered; *decision*
events (``MailFrom``, ``RcptTo``, ``EndOfData``, ``AuthAttempt``) wait for the adapter's
``ServerConnection.respond(reply)`` and the core parses nothing further until then.  That pause is what
keeps pipelined replies in command order (RFC 2920) while the adapter does slow work (policy lookups,
durable storage) between reading and answering.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zonerelay.smtp.replies import Reply

__all__ = [
    "DECISION_EVENTS",
    "NEED_DATA",
    "PAUSED",
    "AuthAttempt",
    "ConnectionLost",
    "DataBegin",
    "DataChunk",
    "DataRejected",
    "Ehlo",
    "EndOfData",
    "Event",
    "MailFrom",
    "Quit",
    "RcptTo",
    "Rset",
    "StartTls",
]


class _Sentinel(type):
    """Metaclass so that a sentinel class prints as its bare name (as h11's do)."""

    def __repr__(cls) -> str:
        return cls.__name__


class NEED_DATA(metaclass=_Sentinel):
    """No complete input: flush ``data_to_send()`` and feed more bytes (or close if ``closing``)."""


class PAUSED(metaclass=_Sentinel):
    """A decision event is waiting for ``respond()``; no further input is parsed until then."""


@dataclass(frozen=True, slots=True)
class Ehlo:
    """EHLO/HELO accepted (informational; the core already replied)."""

    hostname: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM (decision).  ``address`` is "" for the null reverse-path ``<>``; param keys upper-case."""

    address: str
    params: dict[str, str | None] = field(default_factory=dict, hash=False)
    size: int | None = None
    body: str | None = None
    smtputf8: bool = False

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 0:
            raise ValueError("declared SIZE must not be negative")


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO (decision).  A 2xx from the adapter adds ``address`` to the envelope."""

    address: str
    params: dict[str, str | None] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("a forward-path is never empty")


@dataclass(frozen=True, slots=True)
class DataBegin:
    """DATA accepted, 354 queued (informational): body chunks follow."""


@dataclass(frozen=True, slots=True)
class DataChunk:
    """A slice of the dot-unstuffed body with CRLF line endings; boundaries are arbitrary."""

    data: bytes

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("a DataChunk is never empty")


@dataclass(frozen=True, slots=True)
class EndOfData:
    """The body ended with CRLF.CRLF (decision): answer once the message is durably stored."""

    size: int

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError("size must not be negative")


@dataclass(frozen=True, slots=True)
class DataRejected:
    """The body ended but the core refused it and already queued ``reply``; discard what was stored.

    Refusals, by rank: bare CR/LF in reject mode, over ``max_size``, undeclared 8-bit data.
    """

    reply: Reply

    def __post_init__(self) -> None:
        if self.reply.code < 400:
            raise ValueError("DataRejected carries a failure reply")


@dataclass(frozen=True, slots=True)
class Rset:
    """The open mail transaction was dropped (RSET, or EHLO/HELO in the middle of one)."""


@dataclass(frozen=True, slots=True)
class StartTls:
    """220 queued for STARTTLS: flush, upgrade the transport, then call ``tls_started()``.

    Bytes the client sent after the STARTTLS line were discarded (CVE-2011-0411).
    """


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    """Credentials from AUTH PLAIN/LOGIN (decision): respond 235 to accept, anything else refuses."""

    mechanism: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Quit:
    """QUIT answered with 221; ``closing`` is True."""


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The peer closed its side (``receive_data(b"")``); a body in progress is incomplete.

    ``closing`` is True from here on, so an adapter loop that stops on ``closing`` ends.
    """


Event = (
    Ehlo
    | MailFrom
    | RcptTo
    | DataBegin
    | DataChunk
    | EndOfData
    | DataRejected
    | Rset
    | StartTls
    | AuthAttempt
    | Quit
    | ConnectionLost
)

DECISION_EVENTS: tuple[type[Event], ...] = (MailFrom, RcptTo, EndOfData, AuthAttempt)
