"""The SMTP server protocol core: bytes in, events and reply bytes out, no I/O (h11 style).

The adapter (``server.py``) feeds what it reads to ``receive_data``, pulls ``next_event`` until it gets
``NEED_DATA`` (then writes ``data_to_send()`` and reads again) and answers decision events with
``respond``.  Everything RFC 5321 says about order, limits and replies is decided here, where it can
be tested byte for byte and fuzzed without a network.

Shape:
- ``TRANSITIONS`` is the state table: for each command state, the commands it accepts and the state
  a success leads to.  A command missing from a state's row is answered ``503 5.5.1`` in one place
  (``_dispatch``), never by checks repeated in handlers.
- Lines are read with a per-command length limit; an over-long line is drained to its end before it
  is answered, so its tail is never taken for a command.
- The DATA body is read by ``_read_data`` on whole buffers with ``bytes.find``/``count``: only
  CRLF.CRLF ends it, so bare-LF tricks cannot smuggle a second message in.
"""

from __future__ import annotations

import enum
import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from zonerelay.smtp import limits
from zonerelay.smtp.events import (
    NEED_DATA,
    PAUSED,
    AuthAttempt,
    ConnectionLost,
    DataBegin,
    DataChunk,
    DataRejected,
    Ehlo,
    EndOfData,
    Event,
    MailFrom,
    Quit,
    RcptTo,
    Rset,
    StartTls,
)
from zonerelay.smtp.grammar import (
    CommandSyntaxError,
    GrammarError,
    PathSyntaxError,
    is_valid_ehlo_name,
    parse_mail_from,
    parse_rcpt_to,
)
from zonerelay.smtp.replies import R, Reply
from zonerelay.smtp.sasl import MECHANISMS, Credentials, Exchange, SaslFailure

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "TRANSITIONS",
    "Command",
    "ProtocolUsageError",
    "ServerConnection",
    "ServerSettings",
    "State",
]

log = logging.getLogger(__name__)

_CR: Final = 13
_LF: Final = 10
_DOT: Final = 46
# A bare line ending: CR not followed by LF, or LF not preceded by CR.
_BARE_LINE_ENDING: Final = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class ProtocolUsageError(RuntimeError):
    """The adapter called the core out of turn (a bug in the adapter, never the peer's fault)."""


class State(enum.Enum):
    INITIAL = "initial"  # greeting sent; EHLO/HELO required before a transaction
    READY = "ready"  # after EHLO/HELO, no transaction open
    MAIL = "mail"  # sender accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading the message body
    AUTH = "auth"  # inside an AUTH exchange: lines are SASL responses
    TLS_PENDING = "tls-pending"  # 220 sent for STARTTLS; waiting for the adapter's handshake
    REJECTED = "rejected"  # 554 greeting: only QUIT (RFC 5321 3.1)
    CLOSED = "closed"  # 221/421 queued or peer gone: input is ignored


class Command(enum.Enum):
    EHLO = "EHLO"
    HELO = "HELO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    HELP = "HELP"
    VRFY = "VRFY"
    EXPN = "EXPN"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    BDAT = "BDAT"


def _session_commands(state: State) -> dict[Command, State]:
    """Commands valid in any command state outside DATA (RFC 5321 4.1.4), and where they lead."""
    return {
        Command.EHLO: State.READY,
        Command.HELO: State.READY,
        Command.RSET: State.INITIAL if state is State.INITIAL else State.READY,
        Command.NOOP: state,
        Command.HELP: state,
        Command.VRFY: state,
        Command.EXPN: state,
        Command.BDAT: state,
        Command.QUIT: State.CLOSED,
    }


# The state table: state -> {command: state after success}.  States without a row (DATA, AUTH,
# TLS_PENDING, CLOSED) do not read commands at all.
TRANSITIONS: Final[dict[State, dict[Command, State]]] = {
    State.INITIAL: _session_commands(State.INITIAL),
    State.READY: {
        **_session_commands(State.READY),
        Command.MAIL: State.MAIL,
        Command.STARTTLS: State.TLS_PENDING,
        Command.AUTH: State.AUTH,
    },
    State.MAIL: {
        **_session_commands(State.MAIL),
        Command.RCPT: State.RCPT,
        Command.DATA: State.DATA,  # refused with 554 "no valid recipients" by the handler
    },
    State.RCPT: {
        **_session_commands(State.RCPT),
        Command.RCPT: State.RCPT,
        Command.DATA: State.DATA,
    },
    State.REJECTED: {Command.QUIT: State.CLOSED},
}

# What a missing transition says, when a more specific text helps the client's operator.
_SEQUENCE_HINTS: Final[dict[tuple[State, Command], Reply]] = {
    (State.INITIAL, Command.MAIL): R.NEED_EHLO,
    (State.INITIAL, Command.STARTTLS): R.NEED_EHLO,
    (State.INITIAL, Command.AUTH): R.NEED_EHLO,
    (State.INITIAL, Command.RCPT): R.NEED_MAIL,
    (State.READY, Command.RCPT): R.NEED_MAIL,
    (State.INITIAL, Command.DATA): R.NEED_MAIL,
    (State.READY, Command.DATA): R.NEED_MAIL,
    (State.MAIL, Command.MAIL): R.NESTED_MAIL,
    (State.RCPT, Command.MAIL): R.NESTED_MAIL,
}


@dataclass(frozen=True)
class ServerSettings:
    """Per-listener policy the core enforces itself (everything else is the adapter's decision)."""

    hostname: str
    max_size: int = 0  # 0 = unlimited; advertised as SIZE n (RFC 1870)
    max_recipients: int = limits.DEFAULT_MAX_RECIPIENTS
    tls_available: bool = False  # advertise STARTTLS
    tls_active: bool = False  # implicit TLS (port 465)
    auth_mechanisms: tuple[str, ...] = ()  # empty: AUTH not offered
    auth_required: bool = False  # MAIL before AUTH -> 530 5.7.0
    auth_requires_tls: bool = True  # never offer AUTH over plain text
    line_endings: Literal["reject", "normalize"] = "reject"
    max_unknown_commands: int = limits.DEFAULT_MAX_UNKNOWN_COMMANDS

    def __post_init__(self) -> None:
        if not self.hostname or not is_valid_ehlo_name(self.hostname):
            raise ValueError(f"invalid hostname {self.hostname!r}")
        if self.max_size < 0 or self.max_recipients < 1 or self.max_unknown_commands < 0:
            raise ValueError("limits must not be negative (and max_recipients at least 1)")
        unknown = [m for m in self.auth_mechanisms if m.upper() not in MECHANISMS]
        if unknown:
            raise ValueError(f"unsupported AUTH mechanisms {unknown}; supported: {sorted(MECHANISMS)}")
        if self.line_endings not in ("reject", "normalize"):
            raise ValueError("line_endings must be 'reject' or 'normalize'")


class _TooLong:
    """Marker returned by ``_take_line`` for a line that was drained because it was over the limit."""


class ServerConnection:
    """One SMTP server session as a state machine.  Not thread-safe; one per connection."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.state = State.INITIAL
        self.closing = False
        self.tls_active = settings.tls_active
        self.ehlo_name: str | None = None
        self.authenticated_user: str | None = None
        self.envelope_sender: str | None = None
        self.envelope_recipients: list[str] = []
        self._mail: MailFrom | None = None
        self._buf = bytearray()
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._pending: Event | None = None  # decision event awaiting respond()
        self._pending_target: State = State.READY  # where an accepting respond() leads
        self._eof = False
        self._draining = False
        self._bad_commands = 0
        self._auth: Exchange | None = None
        self._auth_mechanism = ""
        self._handlers: dict[Command, Callable[[str, State], None]] = {
            Command.EHLO: self._ehlo,
            Command.HELO: self._helo,
            Command.MAIL: self._mail_from,
            Command.RCPT: self._rcpt_to,
            Command.DATA: self._data,
            Command.RSET: self._rset,
            Command.NOOP: self._noop,
            Command.QUIT: self._quit,
            Command.HELP: self._help,
            Command.VRFY: self._vrfy,
            Command.EXPN: self._not_implemented,
            Command.BDAT: self._not_implemented,
            Command.STARTTLS: self._starttls,
            Command.AUTH: self._auth_command,
        }
        self._reset_data_reader()

    # -- public API ---------------------------------------------------------------------------------

    @property
    def in_data(self) -> bool:
        """True while the message body is being read (a lost connection now loses the message)."""
        return self.state is State.DATA

    def greet(self, banner: Reply | None = None) -> None:
        """Queue the 220 banner, or a 554 refusal after which only QUIT is accepted (RFC 5321 3.1)."""
        reply = banner or R.greeting(self.settings.hostname)
        self._send(reply)
        if reply.code == 554:
            self.state = State.REJECTED

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
            return
        if self._eof or self.closing or self.state in (State.CLOSED, State.TLS_PENDING):
            # After 221/421 nothing the peer says matters; after STARTTLS's 220 the next bytes belong
            # to the TLS handshake, never to this plain-text buffer (CVE-2011-0411).
            return
        if self._draining:
            cut = data.find(b"\n")
            if cut < 0:
                return  # still inside the over-long line: do not even buffer it
        self._buf += data

    def next_event(self) -> Event | type[NEED_DATA] | type[PAUSED]:
        """The next event, ``PAUSED`` while a decision is pending, or ``NEED_DATA``.  Never raises."""
        try:
            return self._next_event()
        except Exception:  # a bug here must cost one session, not the server; the peer sees no detail
            log.exception("SMTP core failure; closing the session")
            self._events.clear()
            self._pending = None
            self._close(R.SERVICE_UNAVAILABLE)
            return NEED_DATA

    def respond(self, reply: Reply) -> None:
        """Answer the pending decision event (see the event classes for what each reply means)."""
        event = self._pending
        if event is None or event in self._events:
            if self.closing:
                return  # the adapter closed the session meanwhile (e.g. 421 on shutdown)
            raise ProtocolUsageError("respond() called without a pending decision event")
        self._pending = None
        self._send(reply)
        accepted = 200 <= reply.code < 300
        if isinstance(event, MailFrom):
            if accepted:
                self.envelope_sender = event.address
                self._mail = event
                self.state = self._pending_target
        elif isinstance(event, RcptTo):
            if accepted:
                self.envelope_recipients.append(event.address)
                self.state = self._pending_target
        elif isinstance(event, EndOfData):
            self._reset_transaction()
            self.state = State.READY
        elif isinstance(event, AuthAttempt):
            if reply.code == 235:
                self.authenticated_user = event.username
            self.state = State.READY
        if reply.code == 421:
            self._close_after_send()

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def send_reply(self, reply: Reply) -> None:
        """Queue an adapter-initiated reply (idle timeout, shutdown); a 421 also closes the session."""
        self._send(reply)
        if reply.code == 421:
            self._close_after_send()

    def tls_started(self) -> None:
        """The transport is now encrypted: forget everything learnt in plain text (RFC 3207 4.2)."""
        if self.state is not State.TLS_PENDING:
            raise ProtocolUsageError("tls_started() without a pending STARTTLS")
        self.tls_active = True
        self.state = State.INITIAL
        self.ehlo_name = None
        self.authenticated_user = None
        self._reset_transaction()
        self._buf.clear()
        self._draining = False

    # -- the event pump -----------------------------------------------------------------------------

    def _next_event(self) -> Event | type[NEED_DATA] | type[PAUSED]:
        if self._events:
            return self._events.popleft()
        if self._pending is not None:
            return PAUSED
        while not self.closing and self.state not in (State.CLOSED, State.TLS_PENDING):
            progressed = self._read_data() if self.state is State.DATA else self._read_command()
            if self._events:
                return self._events.popleft()
            if not progressed:
                break
        if self._eof and not self.closing:
            # The peer is gone: whatever is buffered is an incomplete command or body.
            self._buf.clear()
            self.state = State.CLOSED
            self.closing = True
            return ConnectionLost()
        return NEED_DATA

    def _emit(self, event: Event) -> None:
        self._events.append(event)

    def _decide(self, event: Event, target: State) -> None:
        """Emit a decision event; parsing stops until ``respond``; an accepting reply leads to ``target``."""
        self._pending = event
        self._pending_target = target
        self._events.append(event)

    def _send(self, reply: Reply) -> None:
        self._out += reply.to_bytes()

    def _close(self, reply: Reply) -> None:
        self._send(reply)
        self._close_after_send()

    def _close_after_send(self) -> None:
        self.closing = True
        self.state = State.CLOSED
        self._buf.clear()

    # -- command lines ------------------------------------------------------------------------------

    def _line_limit(self) -> int:
        if self.state is State.AUTH:
            return limits.AUTH_LINE_MAX
        verb = bytes(self._buf[:5]).upper()
        if verb == b"AUTH ":
            return limits.AUTH_LINE_MAX
        if verb in (b"MAIL ", b"RCPT "):
            return limits.MAIL_COMMAND_LINE_MAX
        return limits.COMMAND_LINE_MAX

    def _take_line(self) -> bytes | type[_TooLong] | None:
        """One line without its terminator (LF or CRLF; commands are read leniently), or None."""
        buf = self._buf
        if self._draining:
            end = buf.find(b"\n")
            if end < 0:
                buf.clear()
                return None
            del buf[: end + 1]
            self._draining = False
            return _TooLong
        limit = self._line_limit()
        end = buf.find(b"\n", 0, limit)
        if end < 0:
            if len(buf) < limit:
                return None
            end = buf.find(b"\n", limit)
            if end < 0:
                buf.clear()
                self._draining = True
                return None
            del buf[: end + 1]
            return _TooLong
        line = bytes(buf[:end])
        del buf[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def _read_command(self) -> bool:
        line = self._take_line()
        if line is None:
            return False
        if line is _TooLong:
            if self.state is State.AUTH:
                self._auth = None
                self.state = State.READY
            self._bad_command(R.LINE_TOO_LONG)
            return True
        assert isinstance(line, bytes)
        text = line.decode("utf-8", "surrogateescape")
        if self.state is State.AUTH:
            self._auth_response(text)
        else:
            self._dispatch(text)
        return True

    def _dispatch(self, text: str) -> None:
        verb, _, argument = text.partition(" ")
        try:
            command = Command(verb.upper())
        except ValueError:
            self._bad_command(R.SYNTAX_ERROR)
            return
        target = TRANSITIONS[self.state].get(command)
        if target is None:
            self._send(_SEQUENCE_HINTS.get((self.state, command), R.BAD_SEQUENCE))
            return
        self._handlers[command](argument.strip(" \t"), target)

    def _bad_command(self, reply: Reply) -> None:
        self._bad_commands += 1
        if self._bad_commands > self.settings.max_unknown_commands:
            self._close(R.TOO_MANY_ERRORS)
        else:
            self._send(reply)

    # -- command handlers: (argument, state after success) ------------------------------------------

    def _ehlo(self, argument: str, target: State) -> None:
        self._hello(argument, target, extended=True)

    def _helo(self, argument: str, target: State) -> None:
        self._hello(argument, target, extended=False)

    def _hello(self, argument: str, target: State, *, extended: bool) -> None:
        name = argument.split(" ", 1)[0]
        if not is_valid_ehlo_name(name):
            self._send(R.EHLO_SYNTAX)
            return
        if self.state in (State.MAIL, State.RCPT):
            self._emit(Rset())  # RFC 5321 4.1.4: EHLO in a transaction resets it
        self._reset_transaction()
        self.ehlo_name = name
        self.state = target
        hostname = self.settings.hostname
        self._send(R.ehlo(hostname, self._keywords()) if extended else R.helo(hostname))
        self._emit(Ehlo(name, extended))

    def _keywords(self) -> tuple[str, ...]:
        s = self.settings
        keywords = ["PIPELINING", f"SIZE {s.max_size}" if s.max_size else "SIZE", "8BITMIME", "SMTPUTF8"]
        keywords.append("ENHANCEDSTATUSCODES")
        if s.tls_available and not self.tls_active:
            keywords.append("STARTTLS")
        if self._auth_offered():
            keywords.append("AUTH " + " ".join(m.upper() for m in s.auth_mechanisms))
        return tuple(keywords)

    def _auth_offered(self) -> bool:
        s = self.settings
        return bool(s.auth_mechanisms) and (self.tls_active or not s.auth_requires_tls)

    def _mail_from(self, argument: str, target: State) -> None:
        if self.settings.auth_required and self.authenticated_user is None:
            self._send(R.AUTH_REQUIRED)
            return
        try:
            address, params = parse_mail_from(argument)
        except CommandSyntaxError:
            self._send(R.MAIL_SYNTAX)
            return
        except PathSyntaxError:
            self._send(R.BAD_SENDER_SYNTAX)
            return
        except GrammarError:
            self._send(R.PARAM_SYNTAX)
            return
        size: int | None = None
        body: str | None = None
        smtputf8 = False
        for key, value in params.items():
            if key == "SIZE":  # RFC 1870: SIZE=1*20DIGIT
                if value is None or not value.isascii() or not value.isdigit() or len(value) > 20:
                    self._send(R.PARAM_SYNTAX)
                    return
                size = int(value)
            elif key == "BODY":  # RFC 6152
                body = (value or "").upper()
                if body not in ("7BIT", "8BITMIME"):
                    self._send(R.PARAM_SYNTAX)
                    return
            elif key == "SMTPUTF8":  # RFC 6531 3.4: no value
                if value is not None:
                    self._send(R.PARAM_SYNTAX)
                    return
                smtputf8 = True
            elif key != "AUTH":  # RFC 4954 5: a server that does not trust the client ignores AUTH=
                self._send(R.PARAM_NOT_IMPLEMENTED)
                return
        if size is not None and self.settings.max_size and size > self.settings.max_size:
            self._send(R.MESSAGE_TOO_BIG)
            return
        if not smtputf8 and not address.isascii():
            self._send(R.UTF8_NOT_DECLARED)
            return
        self._decide(MailFrom(address, params, size, body, smtputf8), target)

    def _rcpt_to(self, argument: str, target: State) -> None:
        try:
            address, params = parse_rcpt_to(argument)
        except CommandSyntaxError:
            self._send(R.RCPT_SYNTAX)
            return
        except PathSyntaxError:
            self._send(R.BAD_RCPT_SYNTAX)
            return
        except GrammarError:
            self._send(R.PARAM_SYNTAX)
            return
        if params:  # DSN (NOTIFY, ORCPT) is not advertised, so no RCPT parameter is known
            self._send(R.PARAM_NOT_IMPLEMENTED)
            return
        if not address.isascii() and not (self._mail is not None and self._mail.smtputf8):
            self._send(R.UTF8_NOT_DECLARED)
            return
        if len(self.envelope_recipients) >= self.settings.max_recipients:
            self._send(R.TOO_MANY_RECIPIENTS)
            return
        self._decide(RcptTo(address, params), target)

    def _data(self, argument: str, target: State) -> None:
        if argument:
            self._send(R.NO_ARGUMENTS)
            return
        if not self.envelope_recipients:
            self._send(R.NO_VALID_RECIPIENTS)
            return
        self._send(R.START_DATA)
        self.state = target
        self._reset_data_reader()
        self._emit(DataBegin())

    def _rset(self, argument: str, target: State) -> None:
        if self.state in (State.MAIL, State.RCPT):
            self._emit(Rset())
        self._reset_transaction()
        self.state = target
        self._send(R.OK)

    def _noop(self, argument: str, target: State) -> None:
        self._send(R.OK)  # RFC 5321 4.1.1.9: any argument is ignored

    def _quit(self, argument: str, target: State) -> None:
        self._close(R.closing(self.settings.hostname))
        self._emit(Quit())

    def _help(self, argument: str, target: State) -> None:
        self._send(R.HELP)

    def _vrfy(self, argument: str, target: State) -> None:
        # RFC 5321 3.5.3 / 7.3: 252 says "not verified, but will try" without disclosing mailboxes.
        self._send(R.VRFY if argument else R.PARAM_SYNTAX)

    def _not_implemented(self, argument: str, target: State) -> None:
        # EXPN would disclose list members (RFC 5321 7.3); BDAT needs CHUNKING, which we do not offer.
        self._send(R.NOT_IMPLEMENTED)

    def _starttls(self, argument: str, target: State) -> None:
        if self.tls_active:
            self._send(R.TLS_ALREADY_ACTIVE)
        elif not self.settings.tls_available:
            # Not advertised, so "not implemented" (as Postfix says); 454 would invite a retry.
            self._send(R.NOT_IMPLEMENTED)
        elif argument:
            self._send(R.NO_ARGUMENTS)  # RFC 3207 4
        else:
            self._send(R.TLS_READY)
            self.state = target
            self._buf.clear()  # CVE-2011-0411: pipelined plain text must not run inside TLS
            self._emit(StartTls())

    # -- AUTH (RFC 4954) ----------------------------------------------------------------------------

    def _auth_command(self, argument: str, target: State) -> None:
        if self.authenticated_user is not None:
            self._send(R.ALREADY_AUTHENTICATED)
            return
        if not self.settings.auth_mechanisms:
            self._send(R.NOT_IMPLEMENTED)
            return
        if not self._auth_offered():
            self._send(R.ENCRYPTION_REQUIRED)
            return
        parts = argument.split()
        if not 1 <= len(parts) <= 2:
            self._send(R.PARAM_SYNTAX)
            return
        mechanism = parts[0].upper()
        if mechanism not in (m.upper() for m in self.settings.auth_mechanisms):
            self._send(R.AUTH_MECHANISM_UNSUPPORTED)
            return
        exchange: Exchange = MECHANISMS[mechanism]()
        self._auth_mechanism = mechanism
        try:
            result = exchange.start(parts[1] if len(parts) == 2 else None)
        except SaslFailure as failure:
            self._send(failure.reply)
            return
        self._auth_result(exchange, result, target)

    def _auth_response(self, text: str) -> None:
        exchange = self._auth
        assert exchange is not None
        try:
            result = exchange.step(text)
        except SaslFailure as failure:
            self._auth = None
            self.state = State.READY
            self._send(failure.reply)
            return
        self._auth_result(exchange, result, State.AUTH)

    def _auth_result(self, exchange: Exchange, result: Reply | Credentials, target: State) -> None:
        if isinstance(result, Reply):
            self._auth = exchange
            self.state = target
            self._send(result)
            return
        self._auth = None
        self.state = State.READY
        self._decide(AuthAttempt(self._auth_mechanism, result.username, result.password), State.READY)

    # -- transaction --------------------------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self.envelope_sender = None
        self.envelope_recipients = []
        self._mail = None

    # -- DATA body (RFC 5321 4.1.1.4, 4.5.2) --------------------------------------------------------

    def _reset_data_reader(self) -> None:
        self._line_start = True  # the next byte begins a line
        self._line_start_crlf = True  # ... and that line follows a real CRLF (or the 354)
        self._size = 0
        # Reasons to refuse the message.  Each is computed from the whole body (up to the first
        # higher-ranked one) whatever the chunking, so the reply does not depend on how the peer's
        # writes were split.  Rank: bare line ending (reject mode), size, undeclared 8-bit.
        self._too_big = False
        self._bare = False
        self._eight_bit = False

    @property
    def _discarding(self) -> bool:
        """The message will be refused: stop emitting chunks, only look for its end."""
        return self._too_big or self._bare or self._eight_bit

    def _read_data(self) -> bool:
        """Consume as much body as the buffer holds; emit one DataChunk and maybe the end event.

        Works on whole stretches between "CRLF." occurrences with ``find``/``count``, so the per-byte
        work happens in C; Python runs once per dot-led line and once per bare CR/LF.  At most two
        bytes are held back: a trailing CR, or a line-leading "." whose line is not yet decidable.
        """
        buf = self._buf
        n = len(buf)
        if not n:
            return False
        normalize = self.settings.line_endings == "normalize"
        mail = self._mail
        check_8bit = mail is None or not (mail.smtputf8 or mail.body == "8BITMIME")
        max_size = self.settings.max_size
        limit = n - 1 if buf[n - 1] == _CR else n  # a trailing CR may be the first half of a CRLF
        crs = buf.count(b"\r", 0, limit)
        clean = crs == buf.count(b"\n", 0, limit) == buf.count(b"\r\n", 0, limit)
        next_bare = n if clean else -1  # cached position of the next bare CR/LF (n: none)
        next_crlf_dot = -1  # cached position of the next b"\r\n." (n: none)
        pieces: list[bytes | bytearray] = []
        ended = False
        pos = 0
        while pos < n:
            if self._line_start:
                if buf[pos] == _DOT:
                    if pos + 1 >= n:
                        break
                    following = buf[pos + 1]
                    if following == _CR:
                        if self._line_start_crlf:
                            if pos + 2 >= n:
                                break
                            if buf[pos + 2] == _LF:  # CRLF "." CRLF: the only end of the message
                                pos += 3
                                ended = True
                                break
                    elif following != _LF:
                        # RFC 5321 4.5.2: "If the first character is a period and there are other
                        # characters on the line, the first character is deleted."
                        pos += 1
                self._line_start = False
            if next_crlf_dot < pos:
                next_crlf_dot = buf.find(b"\r\n.", pos)
                if next_crlf_dot < 0:
                    next_crlf_dot = n
            end = next_crlf_dot + 2 if next_crlf_dot < n else limit
            if end <= pos:
                break
            if self._bare:
                # Reject mode, and the message is already refused for a bare line ending (which
                # outranks every other refusal): only the end marker matters now, so skip ahead.
                if buf[end - 1] == _LF:
                    self._line_start = True
                    self._line_start_crlf = end - pos >= 2 and buf[end - 2] == _CR
                pos = end
                continue
            if next_bare < pos:
                match = _BARE_LINE_ENDING.search(buf, pos, limit)
                next_bare = match.start() if match else n
            if next_bare < end:
                # A bare CR or LF: a line ending for dot handling and size (so both modes count
                # the same), CRLF in the output, and never part of an end-of-data marker.
                if not normalize:
                    self._bare = True
                self._take(pieces, pos, next_bare, b"\r\n", check_8bit, max_size)
                pos = next_bare + 1
                self._line_start = True
                self._line_start_crlf = False
                continue
            self._take(pieces, pos, end, b"", check_8bit, max_size)
            if buf[end - 1] == _LF:  # not bare (checked above), so the end of a CRLF
                self._line_start = True
                self._line_start_crlf = True
            pos = end
        del buf[:pos]
        if pieces and not self._discarding:
            self._emit(DataChunk(b"".join(pieces)))
        if ended:
            self._end_of_data()
        return pos > 0

    def _take(
        self,
        pieces: list[bytes | bytearray],
        start: int,
        stop: int,
        suffix: bytes,
        check_8bit: bool,
        max_size: int,
    ) -> None:
        """Account for body bytes ``buf[start:stop] + suffix`` and keep them unless refusing."""
        self._size += stop - start + len(suffix)
        if max_size and self._size > max_size:
            self._too_big = True
        if self._discarding:
            return
        piece = self._buf[start:stop]
        if check_8bit and not piece.isascii():
            self._eight_bit = True
            return
        pieces.append(piece)
        if suffix:
            pieces.append(suffix)

    def _end_of_data(self) -> None:
        size = self._size
        if self._bare:  # first: once seen, the reader stops counting (see _read_data)
            reply: Reply | None = R.BARE_LINE_ENDING
        elif self._too_big:
            reply = R.MESSAGE_TOO_BIG
        elif self._eight_bit:
            reply = R.EIGHT_BIT_NOT_DECLARED
        else:
            reply = None
        self._reset_data_reader()
        if reply is None:
            self._decide(EndOfData(size), State.READY)
            return
        self._send(reply)
        self._reset_transaction()
        self.state = State.READY
        self._emit(DataRejected(reply))
