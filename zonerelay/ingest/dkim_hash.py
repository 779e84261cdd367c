"""Streaming DKIM body hashes (RFC 6376 §3.4.3 "simple" and §3.4.4 "relaxed"), sha256.

Why hand-written: dkimpy (and most libraries) canonicalise the body as one ``bytes`` object, so signing a
100 MB message would hold it (and a few canonicalised copies) in memory.  Ingest streams the body to the
store chunk by chunk, so the body hashes are computed on the same chunks and stored with the message
(ZoneMTA's ``meta.dkim.bodyHash``); at send time only the header signature is left to compute.

The state kept between chunks is O(1): a flag for a held-back ``\\r`` (it may start a CRLF split across
chunks), a flag for a pending run of WSP (relaxed: it becomes one SP or disappears, depending on whether the
line ends there), and a *count* of pending empty lines (trailing CRLFs are dropped only if nothing follows
them).  Bodies are processed with bytes methods and regexes in C, never byte by byte in Python.

What is hashed is the body *as transmitted*: SMTP cannot carry a body that does not end in CRLF, so a
non-empty body without a final CRLF is hashed as if it had one.  This matches dkimpy on every body except
one dkimpy gets wrong for the wire: relaxed, last line unterminated and ending in WSP (``b"x "``), where
dkimpy keeps the space but a verifier, seeing ``b"x \\r\\n"``, removes it.  The sender must therefore
append the CRLF when the stored body lacks one (it has to anyway, before the final ``.``).

Lines are delimited by CRLF only (a bare CR or LF is ordinary line content), as in RFC 6376 and dkimpy.
No ``l=`` body length limit is supported (it is unsafe and rarely used).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

__all__ = ["BodyHasher"]

_CRLF = b"\r\n"
# Relaxed WSP compression is done as "tabs to spaces, then halve runs of spaces until none is left":
# translate() and replace() run at memory speed, where a regex substitution costs ~10x more on text
# with a lot of indentation.  A run of n spaces needs log2(n) passes.
_TAB_TO_SP = bytes.maketrans(b"\t", b" ")
# A maximal run of CRLF pairs at the very end of a string made only of CR and LF bytes.
_TRAILING_CRLFS = re.compile(rb"(?:\r\n)+\Z")
# Pending empty lines are flushed in blocks of this many CRLFs so a body of millions of empty lines followed
# by text never allocates more than this at once.
_FLUSH_BLOCK = 32 * 1024


def _update_crlfs(h: Any, n: int) -> None:
    while n > 0:
        k = min(n, _FLUSH_BLOCK)
        h.update(_CRLF * k)
        n -= k


class _TrailingLines:
    """Feeds a hash while holding back trailing CRLFs (as a count) until non-CRLF data follows them.

    Invariant: what has been hashed never ends in CRLF (those are counted in ``pending``), and a CR at
    the end of a chunk is held in ``cr`` because the next chunk may start with its LF.
    """

    __slots__ = ("cr", "h", "nonempty", "pending")

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.pending = 0  # CRLF pairs seen but not hashed yet
        self.cr = False  # a CR held back at the end of the last chunk
        self.nonempty = False  # something other than trailing CRLFs has been hashed

    def feed(self, data: bytes) -> None:
        if self.cr:
            data = b"\r" + data
            self.cr = False
        if not data:
            return
        if data[-1] == 13:  # b"\r"
            self.cr = True
            data = data[:-1]
        content = data.rstrip(b"\r\n")
        if len(content) == len(data):
            pairs = 0
        else:
            tail = data[len(content) :]
            m = _TRAILING_CRLFS.search(tail)
            if m is None:
                pairs = 0
                content = data
            else:
                pairs = (m.end() - m.start()) // 2
                content = data[: len(content) + m.start()]
        if content:
            _update_crlfs(self.h, self.pending)
            self.h.update(content)
            self.nonempty = True
            self.pending = pairs
        else:
            self.pending += pairs

    def final_digest(self, extra: bytes, *, empty_is_crlf: bool) -> bytes:
        """Digest of everything fed plus ``extra``, then the final CRLF; the state is left untouched."""
        h = self.h.copy()
        tail = (b"\r" if self.cr else b"") + extra
        nonempty = self.nonempty
        if tail:
            _update_crlfs(h, self.pending)
            h.update(tail)
            nonempty = True
        if nonempty or empty_is_crlf:
            h.update(_CRLF)
        return h.digest()


class BodyHasher:
    """Computes the sha256 body hashes for both canonicalisations from arbitrarily split chunks.

    ``update()`` the body chunks (dot-unstuffed, headers excluded), then ``digests()``; ``size`` counts the
    bytes seen.  ``digests()`` does not end the stream: more chunks may follow and it may be called again.
    """

    __slots__ = ("_relaxed", "_relaxed_cr", "_relaxed_wsp", "_simple", "size")

    hash_algo = "sha256"

    def __init__(self) -> None:
        self.size = 0
        self._simple = _TrailingLines()
        self._relaxed = _TrailingLines()
        self._relaxed_wsp = False  # a WSP run ended the last chunk (relaxed); stands for one SP
        self._relaxed_cr = False  # a CR ended the last chunk, after that WSP run if any (relaxed)

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        data = bytes(chunk)
        if not data:
            return
        self.size += len(data)
        self._simple.feed(data)

        # Relaxed: re-attach what was held back, hold back what the next chunk decides (a final CR, and
        # before it a WSP run: trailing WSP if a CRLF follows, one SP otherwise), rewrite the rest.
        if self._relaxed_wsp or self._relaxed_cr:
            data = (b" " if self._relaxed_wsp else b"") + (b"\r" if self._relaxed_cr else b"") + data
        self._relaxed_cr = data[-1] == 13
        if self._relaxed_cr:
            data = data[:-1]
        stripped = data.rstrip(b" \t")
        self._relaxed_wsp = len(stripped) != len(data)
        data = stripped
        if b"\t" in data:
            data = data.translate(_TAB_TO_SP)
        # The one-byte test is memchr-fast; multi-byte "in" is much slower when the needle is absent,
        # which is the common case for base64 bodies.
        if b" " in data:
            while b"  " in data:
                data = data.replace(b"  ", b" ")
            if b" \r\n" in data:
                data = data.replace(b" \r\n", b"\r\n")
        self._relaxed.feed(data)

    def digest_bytes(self) -> dict[str, bytes]:
        """Raw body hashes keyed by canonicalisation name ("simple", "relaxed")."""
        # End of body: a held CR is content, so a WSP run before it is an inner run (one SP); a WSP run
        # with no CR after it is trailing WSP of the last line (the implied final CRLF ends the line).
        extra = (b" \r" if self._relaxed_wsp else b"\r") if self._relaxed_cr else b""
        return {
            "simple": self._simple.final_digest(b"", empty_is_crlf=True),
            "relaxed": self._relaxed.final_digest(extra, empty_is_crlf=False),
        }

    def digests(self) -> dict[str, str]:
        """Base64 body hashes (the DKIM ``bh=`` value) plus ``hash_algo``."""
        out = {k: base64.b64encode(v).decode("ascii") for k, v in self.digest_bytes().items()}
        out["hash_algo"] = self.hash_algo
        return out
