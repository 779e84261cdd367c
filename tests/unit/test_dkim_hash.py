"""BodyHasher against dkimpy's canonicalisation, for every chunking."""

from __future__ import annotations

import base64
import functools
import hashlib
import re

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import Relaxed, Simple
from hypothesis import given, settings
from hypothesis import strategies as st

from zonerelay.ingest.dkim_hash import BodyHasher

EMPTY_SIMPLE = base64.b64encode(hashlib.sha256(b"\r\n").digest()).decode()
EMPTY_RELAXED = base64.b64encode(hashlib.sha256(b"").digest()).decode()


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def reference(body: bytes) -> dict[str, str]:
    """dkimpy on the body as transmitted (SMTP adds the final CRLF a non-empty body lacks)."""
    wire = body if not body or body.endswith(b"\r\n") else body + b"\r\n"
    return {
        "simple": b64sha(Simple.canonicalize_body(wire)),
        "relaxed": b64sha(Relaxed.canonicalize_body(wire)),
        "hash_algo": "sha256",
    }


def hash_chunks(chunks: list[bytes]) -> BodyHasher:
    h = BodyHasher()
    for c in chunks:
        h.update(c)
    return h


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(body)) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(body)]:
        out.append(body[prev:p])
        prev = p
    return out


ALPHABET = st.sampled_from([b" ", b"\t", b"\r\n", b"x", b"\xc3\xa9", b".", b"\r", b"\n", b"  ", b"\r\n\r\n"])
BODIES = st.lists(ALPHABET, max_size=60).map(b"".join)


@settings(max_examples=3000, deadline=None)
@given(BODIES, st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_matches_dkimpy_for_any_chunking(body: bytes, cuts: list[int]) -> None:
    h = hash_chunks(split_at(body, cuts))
    assert h.digests() == reference(body)
    assert h.size == len(body)


@settings(max_examples=1000, deadline=None)
@given(BODIES)
def test_equals_dkimpy_directly_when_body_ends_with_crlf(body: bytes) -> None:
    body += b"\r\n"
    d = hash_chunks([bytes([b]) for b in body]).digests()  # one byte at a time: every boundary
    assert d["simple"] == b64sha(Simple.canonicalize_body(body))
    assert d["relaxed"] == b64sha(Relaxed.canonicalize_body(body))


@pytest.mark.parametrize(
    ("body", "simple", "relaxed"),
    [
        (b"", b"\r\n", b""),
        (b"\r\n", b"\r\n", b""),
        (b"\r\n" * 50, b"\r\n", b""),
        (b"x", b"x\r\n", b"x\r\n"),
        (b"x\r\n\r\n\r\n", b"x\r\n", b"x\r\n"),
        (b"a  b\t\tc \t\r\n \t\r\n\t\r\n", b"a  b\t\tc \t\r\n \t\r\n\t\r\n", b"a b c\r\n"),
        (b" \t \r\n", b" \t \r\n", b""),
        (b"x\r\n\r\ny\r\n\r\n", b"x\r\n\r\ny\r\n", b"x\r\n\r\ny\r\n"),
        (b"x\r", b"x\r\r\n", b"x\r\r\n"),
        (b"x \r", b"x \r\r\n", b"x \r\r\n"),
        (b"x\n\r\n", b"x\n\r\n", b"x\n\r\n"),  # bare LF is line content
        # Deviation from dkimpy (which keeps the space): the wire carries b"x \r\n", relaxed strips it.
        (b"x ", b"x \r\n", b"x\r\n"),
        (b"x\r\n  ", b"x\r\n  \r\n", b"x\r\n"),
    ],
)
def test_fixed_cases(body: bytes, simple: bytes, relaxed: bytes) -> None:
    expected = {"simple": b64sha(simple), "relaxed": b64sha(relaxed), "hash_algo": "sha256"}
    assert hash_chunks([body]).digests() == expected
    assert hash_chunks([bytes([b]) for b in body]).digests() == expected


def test_empty_body_known_values() -> None:
    d = BodyHasher().digests()
    assert d["simple"] == EMPTY_SIMPLE == "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY="
    assert d["relaxed"] == EMPTY_RELAXED == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    assert hash_chunks([b"", b""]).digests() == d


def test_dkimpy_deviation_is_only_for_unterminated_trailing_wsp() -> None:
    body = b"hello \t"
    d = hash_chunks([body]).digests()
    assert d["relaxed"] == b64sha(Relaxed.canonicalize_body(body + b"\r\n"))
    assert d["relaxed"] != b64sha(Relaxed.canonicalize_body(body))  # dkimpy hashes b"hello \r\n"


def test_digests_is_not_final_and_repeatable() -> None:
    h = BodyHasher()
    h.update(b"line one  \r\n\r\n")
    first = h.digests()
    assert h.digests() == first == reference(b"line one  \r\n\r\n")
    h.update(b"\r")
    assert h.digests() == reference(b"line one  \r\n\r\n\r")
    h.update(b"\nmore\t\r\n")
    assert h.digests() == reference(b"line one  \r\n\r\n\r\nmore\t\r\n")


def test_accepts_bytearray_and_memoryview() -> None:
    body = b"a \t b\r\n\r\n"
    h = BodyHasher()
    h.update(bytearray(body[:3]))
    h.update(memoryview(body)[3:])
    assert h.digests() == reference(body)
    assert h.size == len(body)


def _big_body() -> bytes:
    lines = [
        b"Lorem ipsum  dolor\tsit amet, " * 3 + b"  \r\n",
        base64.b64encode(bytes(range(256)))[:76] + b"\r\n",
        b"\t\t<div>   indented </div>\t \r\n",
        b"\r\n",
    ]
    body = b"".join(lines) * 23_000  # ~5 MB
    # (dkimpy's trailing-WSP regex is quadratic in the length of a WSP run, so the runs stay short here.)
    return body + b"y" * 300_000 + b" " * 3_000 + b"z\r\n" + b"\r\n" * 70_000 + b" \t "


@functools.cache
def _big_reference() -> dict[str, str]:
    return reference(_big_body())


@pytest.mark.parametrize("chunk", [1 << 10, 65536, 262144, 1_000_003])
def test_five_megabyte_body(chunk: int) -> None:
    body = _big_body()
    assert len(body) > 5_000_000
    h = hash_chunks([body[i : i + chunk] for i in range(0, len(body), chunk)])
    assert h.digests() == _big_reference()
    assert h.size == len(body)


def test_only_crlfs_many_chunks() -> None:
    body = b"\r\n" * 100_001
    chunks = [body[i : i + 4097] for i in range(0, len(body), 4097)]  # odd size: splits CRLFs
    assert hash_chunks(chunks).digests() == {
        "simple": EMPTY_SIMPLE,
        "relaxed": EMPTY_RELAXED,
        "hash_algo": "sha256",
    }
    # ...and text after a long run of empty lines brings every one of them back.
    h = hash_chunks([*chunks, b"end"])
    assert h.digests() == reference(body + b"end")


@pytest.mark.parametrize("canon", [b"relaxed", b"simple"])
def test_bh_matches_a_dkimpy_signature(canon: bytes) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    fmt = serialization.PrivateFormat.TraditionalOpenSSL
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    body = b"Hello  world \t\r\n\r\n  indented\r\n\r\n\r\n"
    message = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\n" + body
    sig = dkim.sign(
        message, b"sel", b"example.com", pem, canonicalize=(canon, canon), include_headers=[b"from"]
    )
    bh = re.search(rb"bh=([^;]+);", re.sub(rb"\s+", b"", sig))
    assert bh is not None
    assert hash_chunks([body[:7], body[7:]]).digests()[canon.decode()] == bh.group(1).decode()


def test_huge_wsp_run_and_huge_line_are_linear() -> None:
    # 8 MB of WSP inside one line, then 8 MB without any CRLF: O(1) state, no quadratic regex.
    body = b"a" + b" \t" * 4_000_000 + b"b" + b"c" * 8_000_000
    h = hash_chunks([body[i : i + 65536] for i in range(0, len(body), 65536)])
    assert h.digests() == {
        "simple": b64sha(body + b"\r\n"),
        "relaxed": b64sha(b"a b" + b"c" * 8_000_000 + b"\r\n"),
        "hash_algo": "sha256",
    }
