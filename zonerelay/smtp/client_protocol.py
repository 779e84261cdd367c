"""Sans-IO pieces of the outbound SMTP client: reply parsing, EHLO capabilities, dot-stuffing
and command encoding.

Nothing here touches a socket, so all of it is tested (and fuzzed) without a network; the
asyncio adapter in ``client.py`` only moves bytes and applies timeouts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from zonerelay.smtp.errors import SmtpProtocolError
from zonerelay.smtp.replies import Reply

# RFC 5321 4.5.3.1.5 allows 512 octets per reply line; real servers exceed it (long
# banners, AUTH lists), so we accept 8 KiB before calling it garbage.
MAX_REPLY_LINE = 8192
# A reply with more lines than this is a broken or hostile server, not a long EHLO.
MAX_REPLY_LINES = 256

# RFC 3463: class "." subject "." detail; the class must agree with the reply code.
_STATUS_RE = re.compile(rb"^([245])\.(\d{1,3})\.(\d{1,3})(?:[ \t]+|$)")


class ReplyParser:
    """Turn bytes from the server into ``Reply`` values, one (multi-line) reply at a time.

    ``feed`` buffers; ``next_reply`` returns a complete reply or None when more bytes are
    needed. Bare LF line ends are tolerated (being liberal in what we read); anything that is
    not ``DDD[ -]text`` raises ``SmtpProtocolError``.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._code: bytes | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned reply (must be 0 before STARTTLS)."""
        return len(self._buffer) + sum(len(line) for line in self._lines)

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > MAX_REPLY_LINE and b"\n" not in self._buffer:
            raise SmtpProtocolError(f"reply line longer than {MAX_REPLY_LINE} bytes")

    def next_reply(self) -> Reply | None:
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    raise SmtpProtocolError(f"reply line longer than {MAX_REPLY_LINE} bytes")
                return None
            if end > MAX_REPLY_LINE:
                raise SmtpProtocolError(f"reply line longer than {MAX_REPLY_LINE} bytes")
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            code = line[:3]
            if len(code) != 3 or not code.isdigit() or not b"1" <= code[:1] <= b"5":
                raise SmtpProtocolError(f"bad reply line {line[:80]!r}")
            sep = line[3:4]
            if sep not in (b"", b" ", b"-"):
                raise SmtpProtocolError(f"bad reply line {line[:80]!r}")
            if self._code is not None and code != self._code:
                raise SmtpProtocolError(f"reply code changed from {self._code!r} to {code!r} mid-reply")
            self._code = code
            self._lines.append(line[4:])
            if len(self._lines) > MAX_REPLY_LINES:
                raise SmtpProtocolError(f"reply with more than {MAX_REPLY_LINES} lines")
            if sep != b"-":
                return self._build()

    def _build(self) -> Reply:
        assert self._code is not None
        code = int(self._code)
        lines, self._lines, self._code = self._lines, [], None
        status: str | None = None
        match = _STATUS_RE.match(lines[0])
        if match and match.group(1) == str(code)[0].encode():
            raw_status = match.group(0).rstrip()
            status = raw_status.decode()
            # Continuation lines usually repeat the status ("550-5.1.1 ...", "550 5.1.1 ...").
            lines = [
                line[len(raw_status) :].lstrip(b" \t") if line.startswith(raw_status) else line
                for line in lines
            ]
        texts = tuple(line.decode("utf-8", "replace") for line in lines)
        return Reply(code, status, texts[0] if len(texts) == 1 else texts)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server announced in its EHLO reply (RFC 5321 4.1.1.1 and extensions)."""

    esmtp: bool = False
    pipelining: bool = False
    starttls: bool = False
    size: int | None = None
    eightbitmime: bool = False
    smtputf8: bool = False
    enhancedstatuscodes: bool = False
    chunking: bool = False
    dsn: bool = False
    auth: frozenset[str] = field(default_factory=frozenset)
    keywords: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Capabilities:
        """Parse the extension lines (all but the first) of a 250 EHLO reply."""
        if reply.code != 250:
            return cls()
        lines = reply.lines[1:]
        keywords: set[str] = set()
        size: int | None = None
        auth: set[str] = set()
        for line in lines:
            parts = line.split()
            if not parts:
                continue
            keyword = parts[0].upper()
            params = parts[1:]
            if keyword.startswith("AUTH="):  # pre-RFC 4954 servers: "AUTH=LOGIN PLAIN"
                params = [keyword[5:], *params]
                keyword = "AUTH"
            keywords.add(keyword)
            if keyword == "SIZE" and params and params[0].isdigit():
                # RFC 1870: 0 means "no fixed maximum".
                size = int(params[0]) or None
            elif keyword == "AUTH":
                auth.update(p.upper() for p in params if p)
        return cls(
            esmtp=True,
            pipelining="PIPELINING" in keywords,
            starttls="STARTTLS" in keywords,
            size=size,
            eightbitmime="8BITMIME" in keywords,
            smtputf8="SMTPUTF8" in keywords,
            enhancedstatuscodes="ENHANCEDSTATUSCODES" in keywords,
            chunking="CHUNKING" in keywords,
            dsn="DSN" in keywords,
            auth=frozenset(auth),
            keywords=frozenset(keywords),
        )


class DotStuffer:
    """Streaming dot-stuffing (RFC 5321 4.5.2) for a DATA body that arrives in chunks.

    Only CRLF starts a line: a bare LF is passed through untouched and never treated as a line
    start, so the receiver's un-stuffing (which also only knows CRLF) restores the input
    exactly. ``stuff`` is a ``bytes.replace`` plus a check of the chunk boundary.
    """

    __slots__ = ("_at_line_start", "_pending_cr")

    def __init__(self) -> None:
        self._at_line_start = True
        self._pending_cr = False

    def stuff(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        out = chunk.replace(b"\r\n.", b"\r\n..")
        if self._at_line_start and chunk[:1] == b".":
            out = b"." + out
        elif self._pending_cr and chunk[:2] == b"\n.":
            out = b"\n." + out[1:]
        if chunk[-1:] == b"\n":
            self._at_line_start = chunk[-2:-1] == b"\r" if len(chunk) > 1 else self._pending_cr
        else:
            self._at_line_start = False
        self._pending_cr = chunk[-1:] == b"\r"
        return out

    def finish(self) -> bytes:
        """The end-of-data marker, preceded by CRLF when the body did not end with one."""
        tail = b".\r\n" if self._at_line_start else b"\r\n.\r\n"
        self._at_line_start, self._pending_cr = True, False
        return tail


def _address(address: str, smtputf8: bool) -> bytes:
    # CR, LF and angle brackets inside an address would let a caller inject commands.
    if any(c in address for c in "\r\n<>\0"):
        raise ValueError(f"address contains a forbidden character: {address!r}")
    if smtputf8:
        return address.encode("utf-8")
    try:
        return address.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"non-ASCII address needs SMTPUTF8: {address!r}") from None


def _domain(name: str) -> bytes:
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"bad EHLO/HELO name {name!r}")
    return name.encode("ascii")


def ehlo(name: str) -> bytes:
    return b"EHLO " + _domain(name) + b"\r\n"


def helo(name: str) -> bytes:
    return b"HELO " + _domain(name) + b"\r\n"


def mail_from(
    address: str, *, size: int | None = None, body8bit: bool = False, smtputf8: bool = False
) -> bytes:
    """``MAIL FROM:<address>`` with SIZE= (RFC 1870), BODY=8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531).

    Pass only the parameters the server announced; the empty address is the null sender.
    """
    command = b"MAIL FROM:<" + _address(address, smtputf8) + b">"
    if size is not None:
        command += b" SIZE=%d" % size
    if body8bit:
        command += b" BODY=8BITMIME"
    if smtputf8:
        command += b" SMTPUTF8"
    return command + b"\r\n"


def rcpt_to(address: str, *, smtputf8: bool = False) -> bytes:
    if not address:
        raise ValueError("empty recipient address")
    return b"RCPT TO:<" + _address(address, smtputf8) + b">\r\n"


DATA = b"DATA\r\n"
RSET = b"RSET\r\n"
QUIT = b"QUIT\r\n"
NOOP = b"NOOP\r\n"
STARTTLS = b"STARTTLS\r\n"
