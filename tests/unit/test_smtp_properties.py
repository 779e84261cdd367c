"""Property tests: the core never raises, does not care how input is split, and round-trips bodies."""

from __future__ import annotations

import itertools
import re
from typing import Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_smtp_protocol import accept_all
from zonerelay.smtp.events import (
    DECISION_EVENTS,
    NEED_DATA,
    PAUSED,
    ConnectionLost,
    DataChunk,
    DataRejected,
    EndOfData,
    Event,
    MailFrom,
    RcptTo,
)
from zonerelay.smtp.protocol import ServerConnection, ServerSettings
from zonerelay.smtp.replies import R, Reply

FAST = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def policy(event: Event) -> Reply:
    """Deterministic, and refuses some things so that refusal paths run too."""
    if isinstance(event, RcptTo) and event.address.startswith("bad"):
        return Reply(550, "5.1.1", "No such user")
    if isinstance(event, MailFrom) and event.address.startswith("bad"):
        return Reply(550, "5.7.1", "Sender denied")
    return accept_all(event)


SETTINGS = [
    ServerSettings("mx.test"),
    ServerSettings(
        "mx.test", max_size=64, max_recipients=2, max_unknown_commands=3, line_endings="normalize"
    ),
    ServerSettings("mx.test", tls_active=True, auth_mechanisms=("PLAIN", "LOGIN"), auth_required=True),
    ServerSettings("mx.test", tls_available=True, max_size=200),
]


def run(server: ServerSettings, chunks: list[bytes]) -> tuple[list[Event], bytes]:
    """Feed chunks (then EOF) through a connection; answer decisions; never call tls_started()."""
    conn = ServerConnection(server)
    conn.greet()
    events: list[Event] = []
    out = bytearray()
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            assert event is not PAUSED
            assert not isinstance(event, type)
            events.append(event)
            if isinstance(event, DECISION_EVENTS):
                conn.respond(policy(event))
        out += conn.data_to_send()
    return events, bytes(out)


def canonical(events: list[Event]) -> list[Event]:
    """Chunk boundaries are arbitrary: merge adjacent chunks.  Of a body that is refused or cut off,
    how much was emitted before the core noticed depends on the split: drop those chunks."""
    merged: list[Event] = []
    pending = b""
    for event in events:
        if isinstance(event, DataChunk):
            pending += event.data
            continue
        if pending and not isinstance(event, DataRejected | ConnectionLost):
            merged.append(DataChunk(pending))
        pending = b""
        merged.append(event)
    if pending:
        merged.append(DataChunk(pending))
    return merged


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


COMMANDS = st.sampled_from(
    [
        b"EHLO client.test\r\n",
        b"HELO c\n",
        b"MAIL FROM:<s@example.com>\r\n",
        b"MAIL FROM:<bad@example.com>\r\n",
        b"MAIL FROM:<> BODY=8BITMIME SIZE=10\r\n",
        b"MAIL FROM:<s@example.com> SIZE=100000\r\n",
        "MAIL FROM:<ä@b.c> SMTPUTF8\r\n".encode(),
        b"RCPT TO:<r@example.net>\r\n",
        b"RCPT TO:<bad@example.net>\r\n",
        b"RCPT TO:<postmaster>\r\n",
        b"RCPT TO:<x> NOTIFY=NEVER\r\n",
        b"DATA\r\n",
        b"hello\r\n",
        b"..dot\r\n",
        b".\r\n",
        b"\n.\n",
        b"\r.\r",
        "na\u00efve\r\n".encode(),
        b"x" * 100 + b"\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"VRFY a\r\n",
        b"BDAT 3\r\n",
        b"STARTTLS\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
        b"AUTH LOGIN\r\n",
        b"YWxpY2U=\r\n",
        b"*\r\n",
        b"GARBAGE\r\n",
        b"NOOP " + b"y" * 600 + b"\r\n",
        b"QUIT\r\n",
    ]
)


@FAST
@given(
    server=st.sampled_from(SETTINGS),
    commands=st.lists(COMMANDS, max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_command_streams_do_not_depend_on_how_they_are_split(
    server: ServerSettings, commands: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(commands)
    whole_events, whole_out = run(server, [stream] if stream else [])
    split_events, split_out = run(server, split(stream, cuts))
    assert split_out == whole_out
    assert canonical(split_events) == canonical(whole_events)
    assert str(R.SERVICE_UNAVAILABLE).encode() not in whole_out  # the safety net never fired


BYTES = st.lists(
    st.one_of(
        st.sampled_from(
            [b"\r", b"\n", b"\r\n", b".", b"\r\n.\r\n", b" ", b"\x00", b"\xff", b"MAIL FROM:<a@b.c>"]
        ),
        st.binary(max_size=40),
    ),
    max_size=60,
).map(b"".join)


@FAST
@given(
    server=st.sampled_from(SETTINGS),
    prefix=st.sampled_from(
        [b"", b"EHLO c\r\n", b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"]
    ),
    data=BYTES,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_random_bytes_never_raise_and_do_not_depend_on_splits(
    server: ServerSettings, prefix: bytes, data: bytes, cuts: list[int]
) -> None:
    stream = prefix + data
    whole_events, whole_out = run(server, [stream])
    split_events, split_out = run(server, split(stream, cuts))
    assert split_out == whole_out
    assert canonical(split_events) == canonical(whole_events)
    assert str(R.SERVICE_UNAVAILABLE).encode() not in whole_out


# -- the DATA reader round-trips any body -----------------------------------------------------------

_LINE_BREAK = re.compile(rb"(\r\n|\r|\n)")


def body_lines(body: bytes) -> list[tuple[bytes, bytes]]:
    """(line, line break) pairs; the last break is made a CRLF so the end marker can follow."""
    parts = _LINE_BREAK.split(body)
    pairs = list(zip(parts[0::2], parts[1::2], strict=False))
    if parts[-1]:
        pairs.append((parts[-1], b"\r\n"))
    elif pairs and pairs[-1][1] != b"\r\n":
        pairs.append((b"", b"\r\n"))
    return pairs


def stuff(body: bytes) -> bytes:
    """What a careful client sends: a line (after any kind of line break) that starts with "." gets
    another one, then the end marker."""
    return (
        b"".join((b"." + line if line.startswith(b".") else line) + br for line, br in body_lines(body))
        + b".\r\n"
    )


def expected(body: bytes) -> bytes:
    """The body as the server must store it: every line break a CRLF."""
    return b"".join(line + b"\r\n" for line, _ in body_lines(body))


def has_bare_line_ending(body: bytes) -> bool:
    return any(br != b"\r\n" for _, br in body_lines(body))


BODIES = st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\xc3\xa9", b" "]), max_size=80).map(
    b"".join
)


@FAST
@given(body=BODIES, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_data_round_trips_in_normalize_mode(body: bytes, cuts: list[int]) -> None:
    server = ServerSettings("mx.test", line_endings="normalize")
    head = b"EHLO c\r\nMAIL FROM:<a@b.c> BODY=8BITMIME\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"
    events, _ = run(server, split(head + stuff(body) + b"NOOP\r\n", cuts))
    want = expected(body)
    assert b"".join(e.data for e in events if isinstance(e, DataChunk)) == want
    assert [e for e in events if isinstance(e, EndOfData | DataRejected)] == [EndOfData(len(want))]


@FAST
@given(body=BODIES, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_data_round_trips_or_is_refused_in_reject_mode(body: bytes, cuts: list[int]) -> None:
    head = b"EHLO c\r\nMAIL FROM:<a@b.c> BODY=8BITMIME\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"
    stuffed = stuff(body)
    events, _ = run(ServerSettings("mx.test"), split(head + stuffed + b"NOOP\r\n", cuts))
    ends = [e for e in events if isinstance(e, EndOfData | DataRejected)]
    if has_bare_line_ending(body):
        assert ends == [DataRejected(R.BARE_LINE_ENDING)]
    else:
        want = expected(body)
        assert b"".join(e.data for e in events if isinstance(e, DataChunk)) == want
        assert ends == [EndOfData(len(want))]


@FAST
@given(body=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_a_crlf_only_body_is_never_ended_early(body: bytes, cuts: list[int]) -> None:
    """Whatever the body, once stuffed it ends exactly at the marker we append (in both modes)."""
    modes: tuple[Literal["reject", "normalize"], ...] = ("reject", "normalize")
    for mode in modes:
        server = ServerSettings("mx.test", line_endings=mode)
        head = b"EHLO c\r\nMAIL FROM:<a@b.c> BODY=8BITMIME\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"
        events, out = run(server, split(head + stuff(body) + b"NOOP\r\n", cuts))
        assert len([e for e in events if isinstance(e, EndOfData | DataRejected)]) == 1
        assert out.endswith(b"250 2.0.0 Ok\r\n")
