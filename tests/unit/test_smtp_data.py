"""The DATA body reader: dot-unstuffing, end of data, size/8-bit/line-ending refusals, SMTP smuggling."""

from __future__ import annotations

import pytest

from tests.unit.test_smtp_protocol import Wire, in_transaction, ready
from zonerelay.smtp.events import (
    DataBegin,
    DataChunk,
    DataRejected,
    EndOfData,
    Event,
    MailFrom,
    Quit,
    RcptTo,
)
from zonerelay.smtp.protocol import NEED_DATA, ServerSettings, State
from zonerelay.smtp.replies import R

QUEUED = str(R.queued("Q1"))


def body_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataChunk))


def deliver(
    payload: bytes, settings: ServerSettings | None = None, mail: bytes = b"", pieces: int = 1
) -> Wire:
    """Open a transaction, send DATA and ``payload`` (split into ``pieces``); replies in ``wire.replies``."""
    wire = ready(settings)
    wire.send(b"MAIL FROM:<s@example.com>" + mail + b"\r\nRCPT TO:<r@example.net>\r\nDATA\r\n")
    wire.take_events()
    size = max(1, -(-len(payload) // pieces))
    wire.replies = wire.send(*(payload[i : i + size] for i in range(0, len(payload), size)))  # type: ignore[attr-defined]
    return wire


@pytest.mark.parametrize("pieces", [1, 2, 3, 10, 1000])
def test_dot_unstuffing_and_the_end_marker(pieces: int) -> None:
    payload = b"Subject: x\r\n\r\n..leading dot\r\n.single\r\n...\r\nmid.dle\r\n.\r\n"
    wire = deliver(payload, pieces=pieces)
    assert body_of(wire.events) == b"Subject: x\r\n\r\n.leading dot\r\nsingle\r\n..\r\nmid.dle\r\n"
    assert wire.events[-1] == EndOfData(len(body_of(wire.events)))
    assert lines_of(wire) == [QUEUED]


def lines_of(wire: Wire) -> list[str]:
    replies: list[str] = wire.replies  # type: ignore[attr-defined]
    return replies


def test_end_of_data_is_answered_and_the_envelope_reset() -> None:
    wire = in_transaction()
    replies = wire.send(b"DATA\r\nhello\r\n.\r\nRCPT TO:<r@example.net>\r\n")
    assert replies[-2:] == [QUEUED, str(R.NEED_MAIL)]
    assert wire.conn.envelope_sender is None and wire.conn.envelope_recipients == []
    assert wire.conn.state is State.READY


def test_empty_body() -> None:
    wire = deliver(b".\r\n")
    assert [e for e in wire.events] == [EndOfData(0)]


def test_the_end_marker_is_paused_on_until_answered() -> None:
    wire = in_transaction()
    conn = wire.conn
    conn.receive_data(b"DATA\r\nbody\r\n.\r\nNOOP\r\n")
    assert conn.next_event() == DataBegin()
    assert conn.next_event() == DataChunk(b"body\r\n")
    assert conn.next_event() == EndOfData(6)
    assert conn.next_event().__name__ == "PAUSED"  # type: ignore[union-attr]
    conn.respond(R.queued("Q9"))
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().decode().split("\r\n")[-3:] == [
        "250 2.0.0 Ok: queued as Q9",
        "250 2.0.0 Ok",
        "",
    ]


def test_chunks_stream_before_the_end() -> None:
    wire = in_transaction()
    wire.send(b"DATA\r\n")
    for _ in range(10):
        wire.send(b"x" * 65_535 + b"\r\n")
    chunks = [e for e in wire.events if isinstance(e, DataChunk)]
    assert len(chunks) >= 10 and all(len(c.data) < 70_000 for c in chunks)
    assert wire.conn.in_data
    wire.send(b".\r\n")
    assert wire.events[-1] == EndOfData(10 * 65_537)


def test_store_failure_reply_ends_the_transaction_too() -> None:
    wire = ready(
        policy=lambda e: (
            R.STORE_FAILED
            if isinstance(e, EndOfData)
            else R.SENDER_OK
            if isinstance(e, MailFrom)
            else R.RECIPIENT_OK
        )
    )
    replies = wire.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nx\r\n.\r\n")
    assert replies[-1] == str(R.STORE_FAILED)
    assert wire.conn.state is State.READY and wire.conn.envelope_recipients == []


# -- refusals reported at the end of the body ---------------------------------------------------------


@pytest.mark.parametrize("pieces", [1, 5, 300])
def test_oversize_is_drained_then_refused(pieces: int) -> None:
    settings = ServerSettings("mx.test", max_size=100)
    payload = b"a" * 98 + b"\r\n" + b"b" * 500 + b"\r\n.\r\nNOOP\r\n"
    wire = deliver(payload, settings, pieces=pieces)
    assert wire.events[-1] == DataRejected(R.MESSAGE_TOO_BIG)
    assert len(body_of(wire.events)) <= 100
    assert lines_of(wire) == ["552 5.3.4 Message size exceeds fixed maximum message size", "250 2.0.0 Ok"]
    assert wire.conn.state is State.READY and wire.conn.envelope_recipients == []


def test_exactly_max_size_is_accepted() -> None:
    wire = deliver(b"a" * 98 + b"\r\n.\r\n", ServerSettings("mx.test", max_size=100))
    assert wire.events[-1] == EndOfData(100)


@pytest.mark.parametrize(
    ("mail", "accepted"),
    [(b"", False), (b" BODY=7BIT", False), (b" BODY=8BITMIME", True), (b" SMTPUTF8", True)],
)
def test_eight_bit_body_must_be_declared(mail: bytes, accepted: bool) -> None:
    wire = deliver("Subject: café\r\n\r\nnaïve\r\n.\r\n".encode(), mail=mail)
    if accepted:
        assert isinstance(wire.events[-1], EndOfData)
        assert body_of(wire.events) == "Subject: café\r\n\r\nnaïve\r\n".encode()
    else:
        assert wire.events[-1] == DataRejected(R.EIGHT_BIT_NOT_DECLARED)
        assert lines_of(wire) == [str(R.EIGHT_BIT_NOT_DECLARED)]


@pytest.mark.parametrize("payload", [b"line\nnext\r\n.\r\n", b"line\rnext\r\n.\r\n", b"a\r\n\n.\r\n.\r\n"])
def test_bare_line_endings_are_refused_in_reject_mode(payload: bytes) -> None:
    wire = deliver(payload)
    assert wire.events[-1] == DataRejected(R.BARE_LINE_ENDING)
    assert lines_of(wire) == ["554 5.6.0 Bare CR or LF in message; lines must end with CRLF"]


@pytest.mark.parametrize(
    ("payload", "body"),
    [
        (b"line\nnext\r\n.\r\n", b"line\r\nnext\r\n"),
        (b"line\rnext\r\n.\r\n", b"line\r\nnext\r\n"),
        (b"a\r\rb\n\nc\r\n.\r\n", b"a\r\n\r\nb\r\n\r\nc\r\n"),
        (b"a\n..b\r\n.\r\n", b"a\r\n.b\r\n"),
        (b"a\r\r\n.\r\n", b"a\r\n\r\n"),
    ],
)
@pytest.mark.parametrize("pieces", [1, 4, 100])
def test_bare_line_endings_are_normalised_in_normalize_mode(payload: bytes, body: bytes, pieces: int) -> None:
    wire = deliver(payload, ServerSettings("mx.test", line_endings="normalize"), pieces=pieces)
    assert body_of(wire.events) == body
    assert wire.events[-1] == EndOfData(len(body))


# -- SMTP smuggling (CVE-2023-51764 and friends; cases from aiosmtpd's test_smtpsmuggling) -------------

SMUGGLE_SEPARATORS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r.\r\n",
    b"\r.\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n .\r\n",
]
SMUGGLED = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n"


@pytest.mark.parametrize("separator", SMUGGLE_SEPARATORS)
@pytest.mark.parametrize("mode", ["reject", "normalize"])
@pytest.mark.parametrize("pieces", [1, 3, 200])
def test_only_crlf_dot_crlf_ends_the_message(separator: bytes, mode: str, pieces: int) -> None:
    settings = ServerSettings("mx.test", line_endings=mode)  # type: ignore[arg-type]
    payload = b"Subject: x\r\n\r\nfirst" + separator + SMUGGLED + b".\r\nQUIT\r\n"
    wire = deliver(payload, settings, pieces=pieces)
    ends = [e for e in wire.events if isinstance(e, EndOfData | DataRejected)]
    assert len(ends) == 1
    assert not any(isinstance(e, MailFrom | RcptTo) for e in wire.events)
    assert isinstance(wire.events[-1], Quit)
    if mode == "normalize":
        assert isinstance(ends[0], EndOfData)
        body = body_of(wire.events)
        assert body.endswith(SMUGGLED) and body.count(b"\r\n") == body.count(b"\n") == body.count(b"\r")
    elif b"\x00" in separator or b" ." in separator:
        assert isinstance(ends[0], EndOfData)  # no bare line ending: an odd but legal body
    else:
        assert ends[0] == DataRejected(R.BARE_LINE_ENDING)


def test_smuggled_message_in_normalize_mode_stays_in_the_body() -> None:
    payload = b"Subject: x\r\n\r\nfirst\n.\nMAIL FROM:<evil@example.com>\r\nsecond\r\n.\r\nQUIT\r\n"
    wire = deliver(payload, ServerSettings("mx.test", line_endings="normalize"))
    assert (
        body_of(wire.events) == b"Subject: x\r\n\r\nfirst\r\n.\r\nMAIL FROM:<evil@example.com>\r\nsecond\r\n"
    )
    assert lines_of(wire) == [QUEUED, "221 2.0.0 mx.test closing connection"]


def test_crlf_dot_split_across_writes_is_still_the_end() -> None:
    for cut in range(1, 5):
        stream = b"abc\r\n.\r\n"
        wire = deliver(b"")
        wire.send(stream[: 3 + cut], stream[3 + cut :])
        assert wire.events[-1] == EndOfData(5), cut


@pytest.mark.parametrize("pieces", [1, 2, 50])
def test_a_bare_line_ending_outranks_the_size_limit(pieces: int) -> None:
    settings = ServerSettings("mx.test", max_size=10)
    wire = deliver(b"x" * 50 + b"\n" + b"y" * 50 + b"\r\n.\r\n", settings, pieces=pieces)
    assert wire.events[-1] == DataRejected(R.BARE_LINE_ENDING)
