"""Sans-IO client pieces: reply parsing, capabilities, dot-stuffing, command encoding."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zonerelay.smtp import client_protocol as proto
from zonerelay.smtp.client_protocol import Capabilities, DotStuffer, ReplyParser
from zonerelay.smtp.errors import SmtpProtocolError
from zonerelay.smtp.replies import Reply


def parse_all(data: bytes) -> list[Reply]:
    parser = ReplyParser()
    parser.feed(data)
    replies = []
    while (reply := parser.next_reply()) is not None:
        replies.append(reply)
    return replies


def test_single_line_with_enhanced_status() -> None:
    assert parse_all(b"250 2.1.0 Sender ok\r\n") == [Reply(250, "2.1.0", "Sender ok")]


def test_single_line_without_status() -> None:
    assert parse_all(b"220 mx.example.test ESMTP ready\r\n") == [
        Reply(220, None, "mx.example.test ESMTP ready")
    ]


def test_status_class_must_match_code() -> None:
    # "5.1.1" under a 250 is text, not a status code.
    assert parse_all(b"250 5.1.1 odd\r\n") == [Reply(250, None, "5.1.1 odd")]


def test_multiline_reply_strips_repeated_status() -> None:
    data = b"550-5.1.1 The email account does not exist.\r\n550 5.1.1 Please check the address.\r\n"
    assert parse_all(data) == [
        Reply(550, "5.1.1", ("The email account does not exist.", "Please check the address."))
    ]


def test_bare_code_and_empty_last_line() -> None:
    assert parse_all(b"250-smtp-sink\r\n250-8BITMIME\r\n250 \r\n354\r\n") == [
        Reply(250, None, ("smtp-sink", "8BITMIME", "")),
        Reply(354, None, ""),
    ]


def test_reply_split_across_feeds() -> None:
    parser = ReplyParser()
    data = b"250-first\r\n250-second\r\n250 third\r\n221 bye\r\n"
    replies = []
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        while (reply := parser.next_reply()) is not None:
            replies.append(reply)
    assert replies == [Reply(250, None, ("first", "second", "third")), Reply(221, None, "bye")]
    assert parser.buffered == 0


def test_buffered_counts_pending_bytes() -> None:
    parser = ReplyParser()
    parser.feed(b"220 go ahead\r\n250 injected")
    assert parser.next_reply() == Reply(220, None, "go ahead")
    assert parser.buffered == len(b"250 injected")


def test_utf8_text_is_decoded() -> None:
    assert parse_all("250 2.0.0 Größe ok\r\n".encode()) == [Reply(250, "2.0.0", "Größe ok")]


@pytest.mark.parametrize(
    "data",
    [
        b"hello\r\n",
        b"25 short\r\n",
        b"2x0 bad\r\n",
        b"650 out of range\r\n",
        b"250_bad separator\r\n",
        b"250-one\r\n251 two\r\n",
        b"250 " + b"x" * 9000 + b"\r\n",
    ],
)
def test_garbage_raises(data: bytes) -> None:
    with pytest.raises(SmtpProtocolError):
        parse_all(data)


def test_overlong_line_without_newline_raises_on_feed() -> None:
    parser = ReplyParser()
    with pytest.raises(SmtpProtocolError):
        parser.feed(b"250 " + b"x" * 9000)


def test_too_many_lines_raises() -> None:
    with pytest.raises(SmtpProtocolError):
        parse_all(b"250-x\r\n" * 300 + b"250 end\r\n")


def test_capabilities_from_ehlo() -> None:
    reply = Reply(
        250,
        None,
        (
            "mx.example.test greets you",
            "pipelining",
            "SIZE 35882577",
            "8BITMIME",
            "STARTTLS",
            "ENHANCEDSTATUSCODES",
            "auth plain LOGIN",
            "AUTH=XOAUTH2",
            "CHUNKING",
            "SMTPUTF8",
            "DSN",
        ),
    )
    caps = Capabilities.from_ehlo(reply)
    assert caps.esmtp and caps.pipelining and caps.starttls and caps.eightbitmime
    assert caps.enhancedstatuscodes and caps.chunking and caps.smtputf8 and caps.dsn
    assert caps.size == 35882577
    assert caps.auth == {"PLAIN", "LOGIN", "XOAUTH2"}


def test_capabilities_size_zero_means_unlimited_and_plain_greeting() -> None:
    caps = Capabilities.from_ehlo(Reply(250, None, ("host", "SIZE 0")))
    assert caps.size is None and "SIZE" in caps.keywords
    bare = Capabilities.from_ehlo(Reply(250, None, "host only"))
    assert bare.esmtp and not bare.pipelining and bare.size is None


def test_command_builders() -> None:
    assert proto.ehlo("relay.example.test") == b"EHLO relay.example.test\r\n"
    assert proto.mail_from("") == b"MAIL FROM:<>\r\n"
    assert (
        proto.mail_from("a@b.test", size=1234, body8bit=True)
        == b"MAIL FROM:<a@b.test> SIZE=1234 BODY=8BITMIME\r\n"
    )
    assert proto.mail_from("jö@b.test", smtputf8=True) == "MAIL FROM:<jö@b.test> SMTPUTF8\r\n".encode()
    assert proto.rcpt_to("x@y.test") == b"RCPT TO:<x@y.test>\r\n"
    assert proto.rcpt_to("ü@y.test", smtputf8=True) == "RCPT TO:<ü@y.test>\r\n".encode()


@pytest.mark.parametrize("address", ["a@b.test>\r\nRCPT TO:<evil@x", "a\n@b", "jö@b.test"])
def test_command_builders_refuse_injection_and_unannounced_utf8(address: str) -> None:
    with pytest.raises(ValueError):
        proto.rcpt_to(address)


def stuff_chunks(chunks: list[bytes]) -> bytes:
    stuffer = DotStuffer()
    return b"".join(stuffer.stuff(chunk) for chunk in chunks) + stuffer.finish()


def unstuff(wire: bytes) -> bytes:
    """The receiver's side (RFC 5321 4.5.2), CRLF lines only, up to CRLF.CRLF."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    body = wire[: -len(b".\r\n")]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def test_dot_stuffing_basics() -> None:
    assert stuff_chunks([b".a\r\n..b\r\nc.\r\n"]) == b"..a\r\n...b\r\nc.\r\n.\r\n"
    assert stuff_chunks([]) == b".\r\n"
    assert stuff_chunks([b"no newline"]) == b"no newline\r\n.\r\n"


def test_dot_stuffing_across_chunk_boundaries() -> None:
    assert stuff_chunks([b"a\r", b"\n.b\r\n"]) == b"a\r\n..b\r\n.\r\n"
    assert stuff_chunks([b"a\r\n", b".b\r\n"]) == b"a\r\n..b\r\n.\r\n"
    assert stuff_chunks([b"a\r", b"\n", b".", b"b\r\n"]) == b"a\r\n..b\r\n.\r\n"


def test_bare_lf_is_not_a_line_start() -> None:
    # Only CRLF starts a line, so "\n." is passed through; the receiver leaves it alone too.
    assert stuff_chunks([b"a\n.\r\n"]) == b"a\n.\r\n.\r\n"
    assert stuff_chunks([b"a\n", b".b\r\n"]) == b"a\n.b\r\n.\r\n"
    assert stuff_chunks([b"x\n"]) == b"x\n\r\n.\r\n"


def test_dot_stuffing_never_ends_data_early() -> None:
    wire = stuff_chunks([b".\r\n", b".\r", b"\n.\r\n"])
    assert wire.find(b"\r\n.\r\n") == len(wire) - 5


_line_text = st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b"\r"))
_lines = st.lists(st.tuples(st.sampled_from([b"", b".", b"..", b"\n."]), _line_text), max_size=30)


@settings(max_examples=300, deadline=None)
@given(_lines, st.lists(st.integers(min_value=0, max_value=2000), max_size=10))
def test_dot_stuffing_round_trip(lines: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    body = b"".join(prefix + text + b"\r\n" for prefix, text in lines)
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    chunks = [body[a:b] for a, b in itertools.pairwise(points)]
    wire = stuff_chunks(chunks)
    assert wire == stuff_chunks([body])  # chunking does not change the result
    assert wire.find(b"\r\n.\r\n") in (len(wire) - 5, -1)
    assert unstuff(wire) == body
