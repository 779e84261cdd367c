"""Header stage of the ingest pipeline: split the stream, parse headers byte-exact, fill in what is missing.

Sans-IO and streaming: :class:`HeaderSplitter` buffers only the header section (bounded by
``max_header_size``) and hands body bytes straight through, so the pipeline can write the body to the store
as it arrives.  :class:`Headers` keeps every header as its original bytes (folding, 8-bit UTF-8 per
RFC 6532, odd spacing) because re-serialising parsed headers would change what the author signed and what
the recipient sees; only headers we add are generated.  Values are decoded lazily, for display and routing.

Input is CRLF text (the SMTP layer and the HTTP adapter normalise line endings); a bare LF is ordinary line
content here.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses, parsedate_to_datetime
from typing import Any

__all__ = [
    "DEFAULT_MAX_HEADER_SIZE",
    "MAX_FUTURE_DELAY",
    "HeaderSplitter",
    "HeaderTooLarge",
    "Headers",
    "decode_rfc2047",
    "delivery_time",
    "ensure_required",
    "parsed_envelope",
    "sender_domain",
]

DEFAULT_MAX_HEADER_SIZE = 1024 * 1024
# A Date further ahead than this is taken for a broken clock or a typo, not a request to delay delivery:
# holding a message for years in the queue helps nobody.
MAX_FUTURE_DELAY = 365 * 24 * 3600.0

# RFC 5322 field name: printable US-ASCII except ":"; obsolete syntax allows WSP before the colon.
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")
_FIELD_PREFIX = re.compile(rb"([!-9;-~]*)([ \t]*)")
_NAME = re.compile(r"[!-9;-~]+\Z")
# CR or LF that is not part of a fold (CRLF followed by WSP): would inject a header or end the section.
_BAD_EOL = re.compile(r"\r(?!\n[ \t])|(?<!\r)\n")


class HeaderTooLarge(ValueError):
    """The header section exceeds ``max_header_size`` (answer 552 5.3.4)."""


class HeaderSplitter:
    """Splits a message stream into the header section and the body, for any chunking.

    ``feed()`` returns the body bytes available so far (``b""`` while still in the header section);
    ``finish()`` returns what is left at end of data.  The header section ends at the first empty line.
    A message without an empty line is all header.  A message whose first line is not a header field
    (no ``name:``, or starting with whitespace, e.g. an mbox ``From `` line) has no header section: all of
    it is body and the pipeline adds the required headers.  A message starting with an empty line has an
    empty header section and the rest is body.
    """

    __slots__ = ("_buf", "_done", "_header_block", "_is_header", "_scan", "max_header_size")

    def __init__(self, max_header_size: int = DEFAULT_MAX_HEADER_SIZE) -> None:
        self.max_header_size = max_header_size
        self._buf = bytearray()
        self._done = False
        self._header_block = b""
        self._is_header: bool | None = None  # does the message start with a header field? None: not known yet
        self._scan = 0  # where to resume searching for CRLFCRLF

    @property
    def done(self) -> bool:
        """True once the header section is complete (everything fed after it is body)."""
        return self._done

    @property
    def header_block(self) -> bytes:
        """The raw header section, without the empty line that ends it (``b""`` if there is none)."""
        return self._header_block

    def feed(self, chunk: bytes) -> bytes:
        if self._done:
            return chunk
        buf = self._buf
        buf += chunk
        if self._is_header is None:
            if buf[:2] == b"\r\n":  # empty header section
                return self._complete(b"", 2)
            if buf == b"\r":  # may be the start of that empty line
                return b""
            self._is_header = _starts_with_field(buf)
            if self._is_header is False:
                return self._complete(b"", 0)
            if self._is_header is None:
                if len(buf) > self.max_header_size:
                    raise HeaderTooLarge(f"header section exceeds {self.max_header_size} bytes")
                return b""
        idx = buf.find(b"\r\n\r\n", self._scan)
        if idx >= 0:
            if idx + 2 > self.max_header_size:
                raise HeaderTooLarge(f"header section exceeds {self.max_header_size} bytes")
            return self._complete(bytes(buf[: idx + 2]), idx + 4)
        # A separator found later starts at len(buf) - 3 or after, so the section is >= len(buf) - 1.
        if len(buf) - 1 > self.max_header_size:
            raise HeaderTooLarge(f"header section exceeds {self.max_header_size} bytes")
        self._scan = max(0, len(buf) - 3)
        return b""

    def finish(self) -> bytes:
        """End of data: returns the remaining body bytes (a message with no empty line has no body)."""
        if self._done:
            return b""
        if self._is_header:
            if len(self._buf) > self.max_header_size:
                raise HeaderTooLarge(f"header section exceeds {self.max_header_size} bytes")
            return self._complete(bytes(self._buf), len(self._buf))
        # Still undecided: the first line never reached a colon, so it is not a header field.
        return self._complete(b"", 0)

    def _complete(self, block: bytes, body_start: int) -> bytes:
        body = bytes(self._buf[body_start:])
        self._header_block = block
        self._buf = bytearray()
        self._done = True
        return body


def _starts_with_field(buf: bytearray) -> bool | None:
    """Whether ``buf`` starts with ``name:`` (None: cannot tell yet, the name may still be arriving)."""
    m = _FIELD_PREFIX.match(buf)
    assert m is not None  # both groups may be empty
    if not m.group(1):
        return None if not buf else False
    end = m.end()
    if end == len(buf):
        return None
    return buf[end] == 0x3A  # b":"


class Headers:
    """The header section as a list of fields, each kept as its raw bytes (folds included).

    Names are case-insensitive.  A line that is neither a field (``name:``) nor a continuation (leading
    WSP) is kept byte-exact as an *unparsable* entry, together with any continuation lines after it: it
    is written back by ``to_bytes()`` (nothing silently lost) but ``get()``/``has()``/``summary()`` ignore
    it and ``remove()`` never touches it.  The only normalisation: a final line without CRLF gets one, so
    ``to_bytes()`` always ends in CRLF (or is empty).
    """

    __slots__ = ("_entries",)

    def __init__(self, block: bytes = b"") -> None:
        # (lower-cased name or "" for unparsable, raw bytes ending in CRLF, offset of the value in raw)
        self._entries: list[tuple[str, bytes, int]] = _parse(block) if block else []

    @classmethod
    def parse(cls, block: bytes) -> Headers:
        return cls(block)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has(name)

    def __repr__(self) -> str:
        return f"Headers({self.to_bytes()!r})"

    def has(self, name: str) -> bool:
        key = name.lower()
        return any(k == key for k, _, _ in self._entries)

    def get(self, name: str) -> str | None:
        """First value of ``name``, unfolded, trimmed, RFC 2047 decoded; None if absent."""
        key = name.lower()
        for k, raw, vs in self._entries:
            if k == key:
                return decode_rfc2047(_raw_value(raw, vs))
        return None

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [decode_rfc2047(_raw_value(raw, vs)) for k, raw, vs in self._entries if k == key]

    def get_raw(self, name: str) -> list[str]:
        """Values of ``name`` unfolded and trimmed but NOT RFC 2047 decoded (for address parsing, where
        decoding first could turn an encoded comma in a display name into an address separator)."""
        key = name.lower()
        return [_raw_value(raw, vs) for k, raw, vs in self._entries if k == key]

    def remove(self, name: str) -> int:
        """Removes every occurrence of ``name``; returns how many were removed."""
        key = name.lower()
        before = len(self._entries)
        self._entries = [e for e in self._entries if e[0] != key]
        return before - len(self._entries)

    def prepend(self, name: str, value: str) -> None:
        """Adds ``name: value`` at the top (trace fields such as Received belong there)."""
        self._entries.insert(0, _make(name, value))

    def append(self, name: str, value: str) -> None:
        """Adds ``name: value`` at the bottom."""
        self._entries.append(_make(name, value))

    def to_bytes(self) -> bytes:
        """The header section, CRLF-terminated lines, without the empty line that ends it."""
        return b"".join(raw for _, raw, _ in self._entries)

    def summary(self) -> list[dict[str, str]]:
        """ZoneMTA's ``meta.headers``: ``[{"key": "from", "line": "From: ..."}]`` (folds kept, no final
        CRLF, UTF-8 decoded with replacement).  Unparsable lines are left out: they have no key."""
        return [{"key": k, "line": raw[:-2].decode("utf-8", "replace")} for k, raw, _ in self._entries if k]


def _parse(block: bytes) -> list[tuple[str, bytes, int]]:
    lines = block.split(b"\r\n")
    if not lines[-1]:
        lines.pop()  # block ended with CRLF (the normal case)
    entries: list[tuple[str, bytes, int]] = []
    key = ""
    parts: list[bytes] = []
    vstart = 0
    match = _FIELD.match
    for line in lines:
        first = line[:1]
        if (first == b" " or first == b"\t") and parts:
            parts.append(line)
            continue
        if parts:
            entries.append((key, b"\r\n".join(parts) + b"\r\n", vstart))
        parts = [line]
        m = match(line)
        if m is None:
            key, vstart = "", 0
        else:
            key, vstart = m.group(1).decode("ascii").lower(), m.end()
    if parts:
        entries.append((key, b"\r\n".join(parts) + b"\r\n", vstart))
    return entries


def _raw_value(raw: bytes, vstart: int) -> str:
    # Unfolding (RFC 5322 §2.2.3) removes the CRLF of each fold; the WSP after it stays.
    return raw[vstart:-2].replace(b"\r\n", b"").strip(b" \t").decode("utf-8", "replace")


def _make(name: str, value: str) -> tuple[str, bytes, int]:
    if not _NAME.match(name):
        raise ValueError(f"invalid header name {name!r}")
    if _BAD_EOL.search(value):
        raise ValueError(f"header value for {name!r} contains a line break that is not a fold")
    raw = f"{name}: {value}\r\n".encode()
    return name.lower(), raw, len(name) + 1


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")


def _decode_word(enc: str, text: str) -> bytes | None:
    try:
        data = text.encode("ascii")
        if enc in "Bb":
            return base64.b64decode(data + b"=" * (-len(data) % 4))
        return binascii.a2b_qp(data, header=True)
    except (ValueError, binascii.Error):
        return None


def _decode_charset(data: bytes, charset: str) -> str:
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    return data.decode(charset, "replace")


def decode_rfc2047(value: str) -> str:
    """Decodes RFC 2047 encoded words for display; never raises (bad words are left as they are).

    Whitespace between adjacent encoded words is dropped and adjacent words in the same charset are
    joined before decoding, so a UTF-8 character split across two words survives.
    """
    if "=?" not in value:
        return value
    out: list[str] = []
    pos = 0
    cs = ""  # charset of the pending bytes
    pending = b""
    after_word = False  # pos is the end of a decoded word
    for m in _ENCODED_WORD.finditer(value):
        data = _decode_word(m.group(2), m.group(3))
        if data is None:  # undecodable: stays literal, as part of the next gap
            continue
        charset = m.group(1).split("*", 1)[0].lower()  # drop an RFC 2231 language suffix
        gap = value[pos : m.start()]
        if after_word and not gap.strip(" \t\r\n"):
            if charset != cs:  # whitespace between encoded words is dropped
                out.append(_decode_charset(pending, cs))
                pending = b""
        else:
            if pending:
                out.append(_decode_charset(pending, cs))
                pending = b""
            out.append(gap)
        pending += data
        cs = charset
        pos = m.end()
        after_word = True
    if pending:
        out.append(_decode_charset(pending, cs))
    out.append(value[pos:])
    return "".join(out)


def ensure_required(headers: Headers, *, hostname: str, now: float) -> list[str]:
    """Adds ``Message-ID`` and ``Date`` when missing or empty; returns the names added.

    ``From`` is never invented: which address to use is policy (the envelope sender may be a bounce
    address), so the pipeline decides.  New fields go to the bottom so trace fields stay on top.
    """
    added: list[str] = []
    for name in ("Message-ID", "Date"):
        values = headers.get_raw(name)
        if values and any(values):
            continue
        if values:
            headers.remove(name)
        if name == "Message-ID":
            headers.append(name, f"<{uuid.uuid4()}@{hostname}>")
        else:
            headers.append(name, format_datetime(datetime.fromtimestamp(now, UTC)))
        added.append(name)
    return added


# Fast path for the common address lists (``a@b``, ``Name <a@b>``, comma-separated) that costs a tenth of
# getaddresses(); anything with quoting, comments, groups or domain literals goes to getaddresses().
# tests/unit/test_ingest_headers.py checks with hypothesis that both agree wherever the fast path answers.
_NOT_SIMPLE = re.compile(r'["()\\:;\[\]]')
_SIMPLE_ADDR = re.compile(r"[ \t]*(?:[^<>@,]*<([^<>\s@,]+@[^<>\s@,]+)>|([^<>\s@,]+@[^<>\s@,]+))[ \t]*")


def _addresses(headers: Headers, name: str) -> list[str]:
    out: list[str] = []
    for value in headers.get_raw(name):
        out.extend(_parse_addresses(value))
    return out


def _parse_addresses(value: str) -> list[str]:
    """Addresses in one header value; never raises (garbage gives fewer addresses, not an error)."""
    fast = _simple_addresses(value)
    if fast is not None:
        return fast
    try:
        pairs = getaddresses([value])
    except Exception:  # getaddresses has raised on odd input in some Python releases; never fail ingest
        return []
    return [addr for _, addr in pairs if addr]


def _simple_addresses(value: str) -> list[str] | None:
    if _NOT_SIMPLE.search(value):
        return None
    out: list[str] = []
    for part in value.split(","):
        if not part.strip(" \t"):
            continue
        m = _SIMPLE_ADDR.fullmatch(part)
        if m is None:
            return None
        out.append(m.group(1) or m.group(2))
    return out


def parsed_envelope(headers: Headers) -> dict[str, Any]:
    """ZoneMTA's ``parsedEnvelope``: addresses from the header fields (not the SMTP envelope)."""
    from_ = _addresses(headers, "from")
    reply_to = _addresses(headers, "reply-to")
    sender = _addresses(headers, "sender")
    return {
        "from": from_[0] if from_ else False,
        "to": _addresses(headers, "to"),
        "cc": _addresses(headers, "cc"),
        "bcc": _addresses(headers, "bcc"),
        "replyTo": reply_to[0] if reply_to else False,
        "sender": sender[0] if sender else False,
    }


def delivery_time(headers: Headers, now: float) -> float:
    """When to first try delivery: a future ``Date`` delays the message (ZoneMTA's delayed delivery).

    An unparsable Date, one in the past, or one more than :data:`MAX_FUTURE_DELAY` ahead means ``now``.
    A Date without a zone (``-0000``) is taken as UTC.
    """
    value = headers.get("date")
    if not value:
        return now
    try:
        dt = parsedate_to_datetime(value)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ts = dt.timestamp()
    except Exception:  # ValueError, TypeError, OverflowError… depending on the garbage
        return now
    if now < ts <= now + MAX_FUTURE_DELAY:
        return ts
    return now


def sender_domain(headers: Headers) -> str | None:
    """Lower-cased domain of the first From: address (used for routing), or None."""
    addrs = _addresses(headers, "from")
    if not addrs:
        return None
    local, at, domain = addrs[0].rpartition("@")
    domain = domain.strip().rstrip(".").lower()
    return domain if at and local and domain else None
