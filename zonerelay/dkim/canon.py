"""DKIM header canonicalisation and selection (RFC 6376 §3.4.1, §3.4.2, §5.4.2), on raw bytes.

Headers are kept as the bytes that go out (8-bit UTF-8 included, RFC 6532), so they are canonicalised as
bytes too: decoding and re-encoding would change what a verifier hashes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

__all__ = ["Canon", "Field", "canonicalize", "parse_fields", "select"]

Canon = Literal["simple", "relaxed"]
#: (lower-cased name, raw field bytes ending in CRLF)
Field = tuple[str, bytes]

_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")
_WSP_RUN = re.compile(rb"[ \t]+")


def parse_fields(block: bytes) -> list[Field]:
    """Split a header section (CRLF lines, optionally ending with the empty line) into fields.

    A line that is not ``name:`` nor a continuation cannot be named in ``h=`` and is left out.
    """
    fields: list[Field] = []
    name: str | None = None
    parts: list[bytes] = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and parts:
            parts.append(line)
            continue
        if parts and name is not None:
            fields.append((name, b"\r\n".join(parts) + b"\r\n"))
        if not line:  # the empty line ends the header section
            parts, name = [], None
            break
        m = _NAME.match(line)
        name = m.group(1).decode("ascii").lower() if m else None
        parts = [line]
    if parts and name is not None:
        fields.append((name, b"\r\n".join(parts) + b"\r\n"))
    return fields


def canonicalize(raw: bytes, canon: Canon) -> bytes:
    """One header field, canonicalised; ``raw`` includes its name and (usually) the final CRLF.

    relaxed: name lower-cased, folds unfolded, WSP runs made one SP, WSP around the colon and at the end
    removed, then CRLF.  simple: unchanged.
    """
    if canon == "simple":
        return raw
    name, _, value = raw.partition(b":")
    value = value.replace(b"\r\n", b"")
    value = _WSP_RUN.sub(b" ", value).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def select(fields: Sequence[Field], names: Iterable[str]) -> list[bytes]:
    """The raw fields that ``h=`` names, in ``h=`` order; a repeated name takes instances from the bottom up.

    A name with no instance left (oversigning) selects nothing, as a verifier's null string does.
    """
    positions: dict[str, list[int]] = {}
    for index, (name, _) in enumerate(fields):
        positions.setdefault(name, []).append(index)
    out: list[bytes] = []
    for name in names:
        stack = positions.get(name.lower())
        if stack:
            out.append(fields[stack.pop()][1])
    return out
