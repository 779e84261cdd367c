"""Header stage: streaming split, byte-exact Headers, required headers, envelope and delivery time."""

from __future__ import annotations

import re
from email.utils import getaddresses, parsedate_to_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zonerelay.ingest.headers import (
    MAX_FUTURE_DELAY,
    Headers,
    HeaderSplitter,
    HeaderTooLarge,
    _simple_addresses,
    decode_rfc2047,
    delivery_time,
    ensure_required,
    parsed_envelope,
    sender_domain,
)

BLOCK = (
    b"Received: from mx.example.org (mx.example.org [192.0.2.1])\r\n"
    b"\tby relay.example.com with ESMTPS id abc123\r\n"
    b"From: Sender <sender@Example.COM>\r\n"
    b"To: one@example.net,\r\n two <two@example.net>\r\n"
    b"Subject: =?utf-8?q?Hello_w=C3=B6rld?= and \xc3\xa9t\xc3\xa9\r\n"
    b"Date: Mon, 03 Oct 2016 12:26:32 +0000\r\n"
    b"Message-ID: <abc.def@example.com>\r\n"
)
BODY = b"Hello\r\n\r\nworld\r\n"
MESSAGE = BLOCK + b"\r\n" + BODY


def run_splitter(chunks: list[bytes], **kw: int) -> tuple[HeaderSplitter, bytes]:
    s = HeaderSplitter(**kw)
    body = b""
    for c in chunks:
        out = s.feed(c)
        if not s.done:
            assert out == b""
        body += out
    body += s.finish()
    assert s.done
    return s, body


# --- HeaderSplitter ------------------------------------------------------------------------------------


def test_split_whole() -> None:
    s, body = run_splitter([MESSAGE])
    assert s.header_block == BLOCK
    assert body == BODY


@pytest.mark.parametrize("cut", range(len(MESSAGE) + 1))
def test_split_at_every_position(cut: int) -> None:
    s, body = run_splitter([MESSAGE[:cut], MESSAGE[cut:]])
    assert (s.header_block, body) == (BLOCK, BODY)


def test_split_byte_by_byte() -> None:
    s, body = run_splitter([bytes([b]) for b in MESSAGE])
    assert (s.header_block, body) == (BLOCK, BODY)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"X-A: 1\r\n", b" cont\r\n", b"B:\xc3\xa9\r\n"]), min_size=1, max_size=8),
    st.binary(max_size=50),
    st.lists(st.integers(0, 200), max_size=6),
)
def test_split_any_chunking(lines: list[bytes], body: bytes, cuts: list[int]) -> None:
    block = b"".join([b"First: line\r\n", *lines])
    msg = block + b"\r\n" + body
    points = sorted({min(c, len(msg)) for c in cuts})
    chunks = [msg[a:b] for a, b in zip([0, *points], [*points, len(msg)], strict=True)]
    s, got = run_splitter(chunks)
    assert (s.header_block, got) == (block, body)


def test_body_passes_through_after_headers() -> None:
    s = HeaderSplitter()
    assert s.feed(b"A: 1\r\n\r\nbody") == b"body"
    chunk = b"more body\r\n"
    assert s.feed(chunk) is chunk
    assert s.finish() == b""


def test_no_empty_line_means_all_headers() -> None:
    s, body = run_splitter([b"Subject: x\r\n", b"To: a@b"])
    assert s.header_block == b"Subject: x\r\nTo: a@b"
    assert body == b""
    assert Headers(s.header_block).to_bytes() == b"Subject: x\r\nTo: a@b\r\n"  # final CRLF added


@pytest.mark.parametrize(
    "msg",
    [
        b"Hello there\r\nSubject: no\r\n\r\nbody",  # no colon on the first line
        b"From sender@example.com Mon Oct 3\r\nSubject: x\r\n\r\n",  # mbox From_ line
        b" Subject: x\r\n\r\nbody",  # starts with WSP
        b": no name\r\n\r\n",
        b"\xc3\xa9: 8-bit name\r\n\r\n",
        b"abc",  # undecided until the end
        b"\r",
    ],
)
def test_first_line_not_a_header_means_all_body(msg: bytes) -> None:
    for chunks in ([msg], [bytes([b]) for b in msg]):
        s, body = run_splitter(chunks)
        assert s.header_block == b""
        assert body == msg


def test_empty_first_line_means_empty_header_section() -> None:
    for chunks in ([b"\r\nbody\r\n"], [b"\r", b"\nbody\r\n"]):
        s, body = run_splitter(chunks)
        assert (s.header_block, body) == (b"", b"body\r\n")


def test_empty_message() -> None:
    s, body = run_splitter([])
    assert (s.header_block, body) == (b"", b"")


def test_header_name_with_space_before_colon_is_a_header() -> None:
    s, body = run_splitter([b"Subject", b" : x\r\n\r\nb"])
    assert (s.header_block, body) == (b"Subject : x\r\n", b"b")
    assert Headers(s.header_block).get("subject") == "x"


def test_header_limit() -> None:
    block = b"X-Long: " + b"a" * 80 + b"\r\n"  # 90 bytes
    s, _ = run_splitter([block + b"\r\nbody"], max_header_size=90)
    assert s.header_block == block
    with pytest.raises(HeaderTooLarge):
        run_splitter([block + b"\r\nbody"], max_header_size=89)
    # Without any separator in sight, the splitter gives up as soon as the limit is certainly exceeded.
    s2 = HeaderSplitter(max_header_size=1000)
    s2.feed(b"X: y\r\n")
    with pytest.raises(HeaderTooLarge):
        for _ in range(1000):
            s2.feed(b"X-Filler: " + b"z" * 100 + b"\r\n")
    with pytest.raises(HeaderTooLarge):  # a first line that never gets its colon
        HeaderSplitter(max_header_size=100).feed(b"a" * 101)
    with pytest.raises(HeaderTooLarge):  # all headers, no body, too large
        run_splitter([b"X: " + b"a" * 200], max_header_size=100)


def test_limit_counts_only_the_header_section() -> None:
    block = b"A: 1\r\n"
    _, body = run_splitter([block + b"\r\n" + b"x" * 10_000], max_header_size=len(block))
    assert len(body) == 10_000


# --- Headers -------------------------------------------------------------------------------------------


def test_round_trip_is_byte_exact() -> None:
    weird = (
        b"X-Spaces:   lots   of  spaces \t\r\n"
        b"x-lower:v\r\n"
        b"Subject: caf\xc3\xa9 \xff invalid utf-8\r\n"
        b"this line has no colon\r\n"
        b"  and a continuation of it\r\n"
        b"To: a@b\r\n"
    )
    assert Headers(BLOCK).to_bytes() == BLOCK
    assert Headers(weird).to_bytes() == weird
    assert Headers(b"").to_bytes() == b""
    assert len(Headers(weird)) == 5


def test_get_unfolds_and_decodes() -> None:
    h = Headers(BLOCK)
    assert h.get("received") == (
        "from mx.example.org (mx.example.org [192.0.2.1])\tby relay.example.com with ESMTPS id abc123"
    )
    assert h.get("SUBJECT") == "Hello wörld and été"
    assert h.get("to") == "one@example.net, two <two@example.net>"
    assert h.get("x-missing") is None
    assert h.has("Message-Id") and "message-id" in h and not h.has("cc")


def test_unparsable_lines_are_kept_but_ignored() -> None:
    h = Headers(b"A: 1\r\ngarbage line\r\nB: 2\r\n")
    assert h.get("garbage line") is None
    assert h.remove("garbage line") == 0
    assert [e["key"] for e in h.summary()] == ["a", "b"]
    assert h.to_bytes() == b"A: 1\r\ngarbage line\r\nB: 2\r\n"


def test_get_all_remove_prepend_append() -> None:
    h = Headers(b"X-T: 1\r\nA: a\r\nx-t: 2\r\n")
    assert h.get_all("X-T") == ["1", "2"]
    assert h.get("x-t") == "1"
    assert h.remove("X-t") == 2
    assert h.get_all("x-t") == []
    h.prepend("Received", "from a by b")
    h.append("X-New", "caf\u00e9")
    assert h.to_bytes() == b"Received: from a by b\r\nA: a\r\nX-New: caf\xc3\xa9\r\n"
    assert h.get("x-new") == "caf\u00e9"
    h.append("X-Folded", "one\r\n two")
    assert h.get("x-folded") == "one two"


@pytest.mark.parametrize("value", ["a\r\nBcc: x@y", "a\nb", "a\rb", "a\r\n"])
def test_header_injection_is_refused(value: str) -> None:
    with pytest.raises(ValueError):
        Headers().append("X-Test", value)


@pytest.mark.parametrize("name", ["", "Bad Name", "Bad:Name", "caf\u00e9"])
def test_bad_header_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        Headers().prepend(name, "v")


def test_summary_zonemta_shape() -> None:
    block = b"Date: Mon, 03 Oct 2016 12:26:32 +0000\r\nsubject: test\r\nX-8: \xc3\xa9\xff\r\n"
    summary = Headers(block).summary()
    assert summary == [
        {"key": "date", "line": "Date: Mon, 03 Oct 2016 12:26:32 +0000"},
        {"key": "subject", "line": "subject: test"},
        {"key": "x-8", "line": "X-8: \u00e9\ufffd"},
    ]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_block_round_trips(block: bytes) -> None:
    h = Headers(block)
    out = h.to_bytes()
    expected = block if not block or block.endswith(b"\r\n") else block + b"\r\n"
    assert out == expected
    h.summary()
    h.get("a")
    parsed_envelope(h)
    delivery_time(h, 0.0)
    sender_domain(h)


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("plain", "plain"),
        ("=?utf-8?q?Doe=2C_J?= <j@x>", "Doe, J <j@x>"),
        ("=?UTF-8?B?w6k=?= =?utf-8?Q?t=C3=A9?=", "été"),
        ("=?utf-8?b?w6?= \t =?utf-8?q?=A9?=", "é"),  # UTF-8 char split across two words
        ("=?iso-8859-1?q?caf=E9?= x =?utf-8?q?a?=", "café x a"),
        ("=?utf-8*en?q?lang?=", "lang"),
        ("=?nosuch-charset?q?abc?=", "abc"),
        ("=?utf-8?x?unknown-encoding?=", "=?utf-8?x?unknown-encoding?="),
        ("a =?utf-8?q?b?= c", "a b c"),
    ],
)
def test_decode_rfc2047(encoded: str, decoded: str) -> None:
    assert decode_rfc2047(encoded) == decoded


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("=?uUtf8-qQbB_ =AZaz09\u00e9"), max_size=40))
def test_decode_rfc2047_never_raises(value: str) -> None:
    decode_rfc2047(value)


# --- ensure_required -----------------------------------------------------------------------------------


def test_ensure_required_adds_missing() -> None:
    h = Headers(b"Received: x\r\nSubject: hi\r\n")
    added = ensure_required(h, hostname="relay.example.com", now=1475497592.5)
    assert added == ["Message-ID", "Date"]
    mid = h.get("message-id")
    assert mid is not None and re.fullmatch(r"<[0-9a-f-]{36}@relay\.example\.com>", mid)
    assert h.get("date") == "Mon, 03 Oct 2016 12:26:32 +0000"
    assert parsedate_to_datetime(h.get("date") or "").timestamp() == 1475497592
    assert h.to_bytes().startswith(b"Received: x\r\nSubject: hi\r\nMessage-ID: <")


def test_ensure_required_keeps_present_and_replaces_empty() -> None:
    h = Headers(BLOCK)
    assert ensure_required(h, hostname="h", now=0.0) == []
    assert h.to_bytes() == BLOCK
    h2 = Headers(b"Message-ID:  \r\nDate: Mon, 03 Oct 2016 12:26:32 +0000\r\n")
    assert ensure_required(h2, hostname="h", now=0.0) == ["Message-ID"]
    assert len(h2.get_all("message-id")) == 1 and (h2.get("message-id") or "").endswith("@h>")


# --- parsed_envelope / sender_domain ---------------------------------------------------------------------


def test_parsed_envelope_zonemta_shape() -> None:
    env = parsed_envelope(Headers(BLOCK))
    assert env == {
        "from": "sender@Example.COM",
        "to": ["one@example.net", "two@example.net"],
        "cc": [],
        "bcc": [],
        "replyTo": False,
        "sender": False,
    }
    env2 = parsed_envelope(
        Headers(
            b'From: =?utf-8?q?Doe=2C_J?= <j@x.org>\r\nCc: "Q, R" <q@r>, (c) s@t\r\nCc: u@v\r\n'
            b"Bcc: undisclosed-recipients:;\r\nReply-To: r@x\r\nSender: s@x\r\n"
        )
    )
    assert env2 == {
        "from": "j@x.org",
        "to": [],
        "cc": ["q@r", "s@t", "u@v"],
        "bcc": [],
        "replyTo": "r@x",
        "sender": "s@x",
    }


@pytest.mark.parametrize(
    ("block", "domain"),
    [
        (b"From: A <a@Example.COM>\r\n", "example.com"),
        (b"From: a@sub.example.org.\r\n", "sub.example.org"),
        (b"From: \xc3\xa9@b\xc3\xbccher.example\r\n", "b\u00fccher.example"),
        (b"From: no-domain\r\n", None),
        (b"From: @\r\n", None),
        (b"Subject: no from\r\n", None),
        (b"From: <<<>>>\r\n", None),
    ],
)
def test_sender_domain(block: bytes, domain: str | None) -> None:
    assert sender_domain(Headers(block)) == domain


_ADDR_PART = st.sampled_from(["a", "b.c", "x+y", "\u00e9", "-", "'", "!"])
_ADDR = st.builds(lambda lp, d: f"{lp}@{d}", _ADDR_PART, _ADDR_PART)
_MAILBOX = st.one_of(
    _ADDR,
    st.builds(
        lambda n, a: f"{n} <{a}>",
        st.sampled_from(["", "Name", "J. Doe", "A  B", "\u00e9t\u00e9"]),
        _ADDR,
    ),
)
_LIST = st.lists(_MAILBOX, max_size=4).flatmap(
    lambda ms: st.sampled_from([",", ", ", " ,\t", ",,"]).map(lambda sep: sep.join(ms))
)
_NOISE = st.lists(st.sampled_from(list("ab.@ <>,\t\u00e9x-+!'\u00a0")), max_size=25).map("".join)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_LIST, _NOISE))
def test_address_fast_path_agrees_with_getaddresses(value: str) -> None:
    fast = _simple_addresses(value)
    if fast is not None:
        assert fast == [addr for _, addr in getaddresses([value]) if addr]


# --- delivery_time -------------------------------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        ("Tue, 14 Nov 2023 22:13:20 +0000", NOW),  # exactly now
        ("Tue, 14 Nov 2023 23:13:20 +0000", NOW + 3600),  # future: delayed delivery
        ("Wed, 15 Nov 2023 00:13:20 +0100", NOW + 3600),  # zone honoured
        ("Tue, 14 Nov 2023 23:13:20 -0000", NOW + 3600),  # no zone: UTC
        ("Tue, 14 Nov 2023 21:13:20 +0000", NOW),  # past
        ("Tue, 14 Nov 2034 23:13:20 +0000", NOW),  # absurdly far ahead
        ("not a date", NOW),
        ("Tue, 99 Nov 2023 99:13:20 +0000", NOW),
        ("", NOW),
    ],
)
def test_delivery_time(date: str, expected: float) -> None:
    assert delivery_time(Headers(f"Date: {date}\r\n".encode()), NOW) == expected


def test_delivery_time_cap_and_missing() -> None:
    assert delivery_time(Headers(b"Subject: x\r\n"), NOW) == NOW
    assert MAX_FUTURE_DELAY == 365 * 24 * 3600
