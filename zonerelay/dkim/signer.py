"""DKIM signatures made at send time from the body hash stored at ingest (RFC 6376, RFC 8463).

Hand-written on ``cryptography`` because dkimpy's ``sign()`` takes the whole message as one ``bytes``
object: here the body is never in memory at all.  Ingest hashed the body while it streamed in (both
canonicalisations, ``meta["dkim"]``); at send time only the header section is canonicalised and hashed and
the hash signed, once per key: rsa-sha256 (PKCS#1 v1.5 over the SHA-256 digest) or ed25519-sha256 (Ed25519
over the SHA-256 digest, as RFC 8463 defines it).

Policy: never ``l=`` (anyone could append to the body), always ``t=``, ``x=`` when an expiry is set, every
instance of each listed header signed and ``From`` named once more than it occurs (oversigning: a second
From added in transit breaks the signature).  Headers the relay adds or removes at send time are never
signed.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from zonerelay.dkim.canon import Canon, Field, canonicalize, parse_fields, select
from zonerelay.dkim.keys import DkimKey

__all__ = ["DEFAULT_HEADERS", "NEVER_SIGNED", "SignatureRequest", "sign_message", "signature_header"]

DEFAULT_HEADERS: tuple[str, ...] = (
    "From", "Sender", "Reply-To", "Subject", "Date", "Message-ID", "To", "Cc", "MIME-Version",
    "Content-Type", "Content-Transfer-Encoding", "Content-ID", "Content-Description", "In-Reply-To",
    "References", "List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Subscribe",
    "List-Post", "List-Owner", "List-Archive", "Feedback-ID", "Resent-Date", "Resent-From", "Resent-To",
    "Resent-Cc", "Resent-Message-ID",
)  # fmt: skip
#: Added or removed by the relay at send time (or by receivers), so a signature over them would break.
NEVER_SIGNED = frozenset({"received", "x-sending-zone", "dkim-signature", "return-path"})
#: Folded lines of the generated header stay under this many characters.
LINE = 76


@dataclass(frozen=True, slots=True)
class SignatureRequest:
    header_canon: Canon
    body_canon: Canon
    headers: Sequence[str]  # names to sign, if present
    expire: float = 0.0  # seconds after t= for x=; 0: no x=


def body_hash(meta: dict[str, Any], body_canon: Canon) -> str:
    """The stored ``bh=`` value for a body canonicalisation (KeyError if ingest did not compute it)."""
    dkim = meta["dkim"]
    return str(dkim["bodyHash"] if body_canon == "relaxed" else dkim["bodyHashSimple"])


def _h_list(fields: Sequence[Field], wanted: Sequence[str]) -> list[str]:
    counts: dict[str, int] = {}
    for name, _ in fields:
        counts[name] = counts.get(name, 0) + 1
    names: list[str] = []
    seen: set[str] = set()
    for name in wanted:
        key = name.lower()
        if key in seen or key in NEVER_SIGNED:
            continue
        seen.add(key)
        n = counts.get(key, 0) + (1 if key == "from" else 0)
        names += [key] * n
    return names


def _fold(tags: list[tuple[str, str]]) -> bytes:
    """``DKIM-Signature: `` + tags folded under :data:`LINE` columns; ``h=`` folds at colons."""
    lines = ["DKIM-Signature:"]
    for index, (tag, value) in enumerate(tags):
        text = f" {tag}={value}" + (";" if index < len(tags) - 1 else "")
        if len(lines[-1]) + len(text) <= LINE:
            lines[-1] += text
            continue
        if tag == "h":
            pieces = text.split(":")
            for n, piece in enumerate(pieces):
                chunk = piece + (":" if n < len(pieces) - 1 else "")
                if len(lines[-1]) + len(chunk) > LINE and lines[-1].strip():
                    lines.append("\t" + chunk.lstrip())
                else:
                    lines[-1] += chunk
        else:
            lines.append("\t" + text.lstrip())
    return "\r\n".join(lines).encode("ascii")


def _fold_b(header: bytes, signature: str) -> bytes:
    """Append the b= value, folded; a verifier drops the value together with the FWS inside it."""
    last = len(header) - header.rfind(b"\n") - 1
    room = max(LINE - last, 8)
    chunks = [signature[:room]] + [signature[i : i + LINE - 1] for i in range(room, len(signature), LINE - 1)]
    return header + "\r\n\t".join(chunks).encode("ascii") + b"\r\n"


def signature_header(
    key: DkimKey,
    request: SignatureRequest,
    fields: Sequence[Field],
    bh: str,
    now: float,
) -> bytes:
    """One complete ``DKIM-Signature`` field (CRLF-terminated) over ``fields`` with body hash ``bh``."""
    h_names = _h_list(fields, request.headers)
    t = int(now)
    tags = [
        ("v", "1"),
        ("a", key.algorithm),
        ("c", f"{request.header_canon}/{request.body_canon}"),
        ("d", key.domain),
        ("s", key.selector),
        ("t", str(t)),
    ]
    if request.expire > 0:
        tags.append(("x", str(t + int(request.expire))))
    tags += [("h", ":".join(h_names)), ("bh", bh), ("b", "")]
    unsigned = _fold(tags)  # ends in "b="
    digest = hashlib.sha256()
    for raw in select(fields, h_names):
        digest.update(canonicalize(raw, request.header_canon))
    # The signature field itself: b= empty, no final CRLF (RFC 6376 §3.7).
    digest.update(canonicalize(unsigned + b"\r\n", request.header_canon)[:-2])
    signed = _sign(key, digest.digest())
    return _fold_b(unsigned, base64.b64encode(signed).decode("ascii"))


def _sign(key: DkimKey, digest: bytes) -> bytes:
    private = key.key
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign(digest)
    assert isinstance(private, rsa.RSAPrivateKey)
    return private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def sign_message(
    keys: Sequence[DkimKey],
    request: SignatureRequest,
    header_block: bytes,
    meta: dict[str, Any],
    now: float | None = None,
) -> bytes:
    """All ``DKIM-Signature`` fields for a message, to be prepended to ``header_block``."""
    if not keys:
        return b""
    fields = parse_fields(header_block)
    bh = body_hash(meta, request.body_canon)
    when = time.time() if now is None else now
    return b"".join(signature_header(key, request, fields, bh, when) for key in keys)
