"""The SMTP server core, driven with byte strings: commands, sequence, limits, STARTTLS, AUTH."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace

import pytest

from zonerelay.smtp import limits
from zonerelay.smtp.events import (
    DECISION_EVENTS,
    NEED_DATA,
    PAUSED,
    AuthAttempt,
    ConnectionLost,
    DataBegin,
    Ehlo,
    EndOfData,
    Event,
    MailFrom,
    Quit,
    RcptTo,
    Rset,
    StartTls,
)
from zonerelay.smtp.protocol import (
    TRANSITIONS,
    Command,
    ProtocolUsageError,
    ServerConnection,
    ServerSettings,
    State,
)
from zonerelay.smtp.replies import R, Reply

# -- the harness: one connection, a policy for decisions, bytes in, reply lines out -----------------

Policy = Callable[[Event], Reply]


def accept_all(event: Event) -> Reply:
    """The adapter's answers in these tests: accept everything, password "secret" only."""
    if isinstance(event, MailFrom):
        return R.SENDER_OK
    if isinstance(event, RcptTo):
        return R.RECIPIENT_OK
    if isinstance(event, EndOfData):
        return R.queued("Q1")
    if isinstance(event, AuthAttempt):
        return R.AUTH_OK if event.password == "secret" else R.AUTH_FAILED
    raise AssertionError(f"not a decision: {event!r}")


class Wire:
    """A ServerConnection and a scripted adapter, with no network and no event loop."""

    def __init__(
        self, settings: ServerSettings | None = None, policy: Policy = accept_all, greet: bool = True
    ):
        self.conn = ServerConnection(settings or ServerSettings("mx.test"))
        self.policy = policy
        self.events: list[Event] = []
        if greet:
            self.conn.greet()
            self.conn.data_to_send()

    def pump(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return
            assert event is not PAUSED, "harness answers every decision at once"
            assert not isinstance(event, type)
            self.events.append(event)
            if isinstance(event, DECISION_EVENTS):
                self.conn.respond(self.policy(event))

    def send(self, *chunks: bytes) -> list[str]:
        """Feed each chunk, pump, and return the reply lines produced."""
        for chunk in chunks:
            self.conn.receive_data(chunk)
            self.pump()
        return lines(self.conn.data_to_send())

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events


def lines(out: bytes) -> list[str]:
    return out.decode("utf-8").split("\r\n")[:-1]


def ready(settings: ServerSettings | None = None, policy: Policy = accept_all) -> Wire:
    wire = Wire(settings, policy)
    wire.send(b"EHLO client.test\r\n")
    wire.take_events()
    return wire


def in_transaction(settings: ServerSettings | None = None) -> Wire:
    wire = ready(settings)
    wire.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.net>\r\n")
    wire.take_events()
    return wire


def plain(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


# -- greeting and EHLO -------------------------------------------------------------------------------


def test_greeting_is_the_220_banner() -> None:
    conn = ServerConnection(ServerSettings("mx.test"))
    conn.greet()
    assert conn.data_to_send() == b"220 mx.test ESMTP zonerelay\r\n"
    assert conn.data_to_send() == b""


def test_ehlo_lists_the_extensions() -> None:
    wire = Wire(ServerSettings("mx.test", max_size=10_000_000))
    assert wire.send(b"EHLO client.test\r\n") == [
        "250-mx.test",
        "250-PIPELINING",
        "250-SIZE 10000000",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250 ENHANCEDSTATUSCODES",
    ]
    assert wire.events == [Ehlo("client.test", extended=True)]
    assert wire.conn.ehlo_name == "client.test"


def test_size_without_limit_and_no_dsn_or_chunking() -> None:
    replies = Wire().send(b"EHLO c\r\n")
    assert "250-SIZE" in replies
    assert not any("DSN" in r or "CHUNKING" in r for r in replies)


@pytest.mark.parametrize(
    ("settings", "starttls", "auth"),
    [
        (dict(tls_available=True), True, None),
        (dict(tls_available=True, tls_active=True), False, None),
        (dict(tls_available=True, auth_mechanisms=("PLAIN", "LOGIN")), True, None),
        (dict(tls_active=True, auth_mechanisms=("PLAIN", "LOGIN")), False, "AUTH PLAIN LOGIN"),
        (dict(auth_mechanisms=("plain",), auth_requires_tls=False), False, "AUTH PLAIN"),
    ],
)
def test_starttls_and_auth_are_advertised_only_when_usable(
    settings: dict[str, object], starttls: bool, auth: str | None
) -> None:
    replies = [r[4:] for r in Wire(ServerSettings("mx.test", **settings)).send(b"EHLO c\r\n")]  # type: ignore[arg-type]
    assert ("STARTTLS" in replies) is starttls
    assert [r for r in replies if r.startswith("AUTH")] == ([auth] if auth else [])


def test_helo_replies_with_the_hostname() -> None:
    wire = Wire()
    assert wire.send(b"HELO client.test\r\n") == ["250 mx.test"]
    assert wire.events == [Ehlo("client.test", extended=False)]


@pytest.mark.parametrize("line", [b"EHLO\r\n", b"EHLO \r\n", b"HELO\r\n", b"EHLO a\x01b\r\n"])
def test_ehlo_needs_a_name(line: bytes) -> None:
    wire = Wire()
    assert wire.send(line) == [str(R.EHLO_SYNTAX)]
    assert wire.conn.state is State.INITIAL


def test_ehlo_in_a_transaction_resets_it() -> None:
    wire = in_transaction()
    assert wire.send(b"EHLO again\r\n")[-1] == "250 ENHANCEDSTATUSCODES"
    assert wire.take_events() == [Rset(), Ehlo("again", True)]
    assert wire.conn.envelope_sender is None and wire.conn.envelope_recipients == []
    assert wire.send(b"RCPT TO:<r@example.net>\r\n") == [str(R.NEED_MAIL)]


# -- the state table ---------------------------------------------------------------------------------


def test_the_table_reads_commands_only_in_command_states() -> None:
    assert set(TRANSITIONS) == {State.INITIAL, State.READY, State.MAIL, State.RCPT, State.REJECTED}
    for state, row in TRANSITIONS.items():
        assert row[Command.QUIT] is State.CLOSED, state


@pytest.mark.parametrize(
    ("script", "reply"),
    [
        (b"MAIL FROM:<a@b.c>\r\n", R.NEED_EHLO),
        (b"RCPT TO:<a@b.c>\r\n", R.NEED_MAIL),
        (b"DATA\r\n", R.NEED_MAIL),
        (b"STARTTLS\r\n", R.NEED_EHLO),
        (b"AUTH PLAIN\r\n", R.NEED_EHLO),
        (b"EHLO c\r\nRCPT TO:<a@b.c>\r\n", R.NEED_MAIL),
        (b"EHLO c\r\nDATA\r\n", R.NEED_MAIL),
        (b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nMAIL FROM:<a@b.c>\r\n", R.NESTED_MAIL),
        (b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nAUTH PLAIN\r\n", R.BAD_SEQUENCE),
        (b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nSTARTTLS\r\n", R.BAD_SEQUENCE),
    ],
)
def test_a_missing_transition_is_503(script: bytes, reply: Reply) -> None:
    settings = ServerSettings(
        "mx.test", tls_available=True, auth_mechanisms=("PLAIN",), auth_requires_tls=False
    )
    assert Wire(settings).send(script)[-1] == str(reply)
    assert reply.code == 503 and reply.status == "5.5.1"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"NOOP\r\n", R.OK),
        (b"NOOP anything at all\r\n", R.OK),
        (b"RSET\r\n", R.OK),
        (b"HELP\r\n", R.HELP),
        (b"HELP MAIL\r\n", R.HELP),
        (b"VRFY postmaster\r\n", R.VRFY),
        (b"VRFY\r\n", R.PARAM_SYNTAX),
        (b"EXPN staff\r\n", R.NOT_IMPLEMENTED),
        (b"BDAT 10 LAST\r\n", R.NOT_IMPLEMENTED),
        (b"noop\r\n", R.OK),
        (b"NOOP\n", R.OK),
    ],
)
def test_session_commands_work_before_and_during_a_transaction(line: bytes, reply: Reply) -> None:
    assert Wire().send(line) == [str(reply)]
    wire = in_transaction()
    assert wire.send(line) == [str(reply)]
    if line.upper().startswith(b"RSET"):
        assert wire.take_events() == [Rset()]
        assert wire.conn.state is State.READY and wire.conn.envelope_recipients == []
    else:
        assert wire.conn.state is State.RCPT and wire.conn.envelope_recipients == ["r@example.net"]


def test_unknown_commands_use_up_a_budget_then_421() -> None:
    wire = Wire(ServerSettings("mx.test", max_unknown_commands=3))
    assert wire.send(b"GET / HTTP/1.1\r\n" * 3) == [str(R.SYNTAX_ERROR)] * 3
    assert not wire.conn.closing
    assert wire.send(b"Host: x\r\nNOOP\r\n") == [str(R.TOO_MANY_ERRORS)]
    assert wire.conn.closing and wire.conn.state is State.CLOSED
    assert wire.send(b"NOOP\r\n") == []


def test_non_utf8_and_empty_lines_are_unknown_commands() -> None:
    assert Wire().send(b"\xff\xfe\r\n\r\n") == [str(R.SYNTAX_ERROR)] * 2


# -- MAIL FROM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"MAIL FROM:<>", MailFrom("", {})),
        (b"MAIL FROM:<s@example.com>", MailFrom("s@example.com", {})),
        (b"mail from:<s@example.com>", MailFrom("s@example.com", {})),
        (b"MAIL FROM: <s@example.com>", MailFrom("s@example.com", {})),
        (b"MAIL FROM:<@relay.one,@relay.two:s@example.com>", MailFrom("s@example.com", {})),
        (b'MAIL FROM:<"john doe"@example.com>', MailFrom('"john doe"@example.com', {})),
        (b"MAIL FROM:<s@[192.0.2.1]>", MailFrom("s@[192.0.2.1]", {})),
        (b"MAIL FROM:<s@[IPv6:2001:db8::1]>", MailFrom("s@[IPv6:2001:db8::1]", {})),
        (b"MAIL FROM:<s@example.com> SIZE=1000", MailFrom("s@example.com", {"SIZE": "1000"}, size=1000)),
        (
            b"MAIL FROM:<s@example.com> body=8bitmime",
            MailFrom("s@example.com", {"BODY": "8bitmime"}, body="8BITMIME"),
        ),
        (b"MAIL FROM:<s@example.com> BODY=7BIT", MailFrom("s@example.com", {"BODY": "7BIT"}, body="7BIT")),
        (b"MAIL FROM:<s@example.com> AUTH=<>", MailFrom("s@example.com", {"AUTH": "<>"})),
        (
            "MAIL FROM:<андрис@уайлддак.орг> SMTPUTF8 BODY=8BITMIME".encode(),
            MailFrom(
                "андрис@уайлддак.орг", {"SMTPUTF8": None, "BODY": "8BITMIME"}, body="8BITMIME", smtputf8=True
            ),
        ),
    ],
)
def test_mail_from_accepted(line: bytes, expected: MailFrom) -> None:
    wire = ready(ServerSettings("mx.test", max_size=5000))
    assert wire.send(line + b"\r\n") == [str(R.SENDER_OK)]
    assert wire.events == [expected]
    assert wire.conn.envelope_sender == expected.address
    assert wire.conn.state is State.MAIL


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"MAIL FROM:s@example.com", R.BAD_SENDER_SYNTAX),
        (b"MAIL FROM:<s@example.com", R.BAD_SENDER_SYNTAX),
        (b"MAIL FROM:<s@example.com>junk", R.BAD_SENDER_SYNTAX),
        (b"MAIL FROM:<s@@example.com>", R.BAD_SENDER_SYNTAX),
        (b"MAIL FROM:<s@-example.com>", R.BAD_SENDER_SYNTAX),
        (b"MAIL FROM:<s@example..com>", R.BAD_SENDER_SYNTAX),
        (b"MAIL FROM:<s@[300.1.1.1]>", R.BAD_SENDER_SYNTAX),
        (b"MAIL FROM:<s@[foo:bar]>", R.BAD_SENDER_SYNTAX),
        (b"MAIL FROM:<s\xff@example.com>", R.BAD_SENDER_SYNTAX),
        (b"MAIL FROM:<postmaster>", R.BAD_SENDER_SYNTAX),
        (b"MAIL FROM:<s@" + b"a" * 64 + b".com>", R.BAD_SENDER_SYNTAX),
        (b"MAIL TO:<s@example.com>", R.MAIL_SYNTAX),
        (b"MAIL", R.MAIL_SYNTAX),
        (b"MAIL FROM:<s@example.com> SIZE=abc", R.PARAM_SYNTAX),
        (b"MAIL FROM:<s@example.com> SIZE", R.PARAM_SYNTAX),
        (b"MAIL FROM:<s@example.com> SIZE=5001", R.MESSAGE_TOO_BIG),
        (b"MAIL FROM:<s@example.com> SIZE=1 SIZE=2", R.PARAM_SYNTAX),
        (b"MAIL FROM:<s@example.com> BODY=BINARYMIME", R.PARAM_SYNTAX),
        (b"MAIL FROM:<s@example.com> SMTPUTF8=yes", R.PARAM_SYNTAX),
        (b"MAIL FROM:<s@example.com> =x", R.PARAM_SYNTAX),
        (b"MAIL FROM:<s@example.com> RET=FULL", R.PARAM_NOT_IMPLEMENTED),
        (b"MAIL FROM:<s@example.com> ENVID=x", R.PARAM_NOT_IMPLEMENTED),
        ("MAIL FROM:<ä@example.com>".encode(), R.UTF8_NOT_DECLARED),
        ("MAIL FROM:<a@bücher.example> BODY=8BITMIME".encode(), R.UTF8_NOT_DECLARED),
    ],
)
def test_mail_from_refused(line: bytes, reply: Reply) -> None:
    wire = ready(ServerSettings("mx.test", max_size=5000))
    assert wire.send(line + b"\r\n") == [str(reply)]
    assert wire.events == []
    assert wire.conn.state is State.READY


def test_mail_needs_auth_when_required() -> None:
    settings = ServerSettings("mx.test", tls_active=True, auth_mechanisms=("PLAIN",), auth_required=True)
    wire = ready(settings)
    assert wire.send(b"MAIL FROM:<s@example.com>\r\n") == [str(R.AUTH_REQUIRED)]
    wire.send(f"AUTH PLAIN {plain('alice', 'secret')}\r\n".encode())
    assert wire.send(b"MAIL FROM:<s@example.com>\r\n") == [str(R.SENDER_OK)]


def test_a_refused_sender_leaves_no_transaction() -> None:
    wire = ready(
        policy=lambda e: Reply(550, "5.7.1", "Sender denied") if isinstance(e, MailFrom) else accept_all(e)
    )
    assert wire.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n") == [
        "550 5.7.1 Sender denied",
        str(R.NEED_MAIL),
        str(R.NEED_MAIL),
    ]
    assert wire.conn.envelope_sender is None and wire.conn.state is State.READY


# -- RCPT TO -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "address"),
    [
        (b"RCPT TO:<r@example.net>", "r@example.net"),
        (b"rcpt to: <r@EXAMPLE.net>", "r@EXAMPLE.net"),
        (b"RCPT TO:<postmaster>", "postmaster"),
        (b"RCPT TO:<Postmaster>", "Postmaster"),
        (b"RCPT TO:<@hop.example:r@example.net>", "r@example.net"),
    ],
)
def test_rcpt_to_accepted(line: bytes, address: str) -> None:
    wire = ready()
    wire.send(b"MAIL FROM:<>\r\n")
    assert wire.send(line + b"\r\n") == [str(R.RECIPIENT_OK)]
    assert wire.events[-1] == RcptTo(address, {})
    assert wire.conn.envelope_recipients == [address] and wire.conn.state is State.RCPT


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"RCPT TO:<>", R.BAD_RCPT_SYNTAX),
        (b"RCPT TO:r@example.net", R.BAD_RCPT_SYNTAX),
        (b"RCPT TO:<r@example.net> x", R.PARAM_NOT_IMPLEMENTED),
        (b"RCPT TO:<r@example.net> NOTIFY=NEVER", R.PARAM_NOT_IMPLEMENTED),
        (b"RCPT TO:<r@example.net> ORCPT=rfc822;r@example.net", R.PARAM_NOT_IMPLEMENTED),
        (b"RCPT TO:<r@example.net> =", R.PARAM_SYNTAX),
        (b"RCPT FROM:<r@example.net>", R.RCPT_SYNTAX),
        ("RCPT TO:<ä@bücher.example>".encode(), R.UTF8_NOT_DECLARED),
    ],
)
def test_rcpt_to_refused(line: bytes, reply: Reply) -> None:
    wire = ready()
    wire.send(b"MAIL FROM:<s@example.com>\r\n")
    assert wire.send(line + b"\r\n") == [str(reply)]
    assert wire.conn.envelope_recipients == [] and wire.conn.state is State.MAIL


def test_utf8_recipient_needs_smtputf8_on_mail() -> None:
    wire = ready()
    wire.send(b"MAIL FROM:<s@example.com> SMTPUTF8\r\n")
    assert wire.send("RCPT TO:<ä@bücher.example>\r\n".encode()) == [str(R.RECIPIENT_OK)]


def test_recipient_limit() -> None:
    wire = ready(ServerSettings("mx.test", max_recipients=2))
    wire.send(b"MAIL FROM:<s@example.com>\r\n")
    script = b"".join(b"RCPT TO:<r%d@example.net>\r\n" % i for i in range(3))
    assert wire.send(script) == [str(R.RECIPIENT_OK)] * 2 + [str(R.TOO_MANY_RECIPIENTS)]
    assert R.TOO_MANY_RECIPIENTS.code == 452 and R.TOO_MANY_RECIPIENTS.status == "4.5.3"


def test_refused_recipients_are_not_in_the_envelope_and_data_needs_one() -> None:
    wire = ready(
        policy=lambda e: Reply(550, "5.1.1", "No such user") if isinstance(e, RcptTo) else accept_all(e)
    )
    replies = wire.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n")
    assert replies == [str(R.SENDER_OK), "550 5.1.1 No such user", str(R.NO_VALID_RECIPIENTS)]
    assert wire.conn.envelope_recipients == [] and wire.conn.state is State.MAIL


# -- PIPELINING (RFC 2920) ---------------------------------------------------------------------------


def test_decisions_pause_the_pipeline_until_answered() -> None:
    conn = ServerConnection(ServerSettings("mx.test"))
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.net>\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), Ehlo)
    assert conn.next_event() == MailFrom("s@example.com", {})
    assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED
    assert lines(conn.data_to_send())[-1] == "250 ENHANCEDSTATUSCODES"
    conn.respond(R.SENDER_OK)
    assert conn.next_event() == RcptTo("r@example.net", {})
    conn.respond(Reply(550, "5.1.1", "No such user"))
    assert conn.next_event() is NEED_DATA
    assert lines(conn.data_to_send()) == [str(R.SENDER_OK), "550 5.1.1 No such user", str(R.OK)]


def test_respond_without_a_decision_is_a_usage_error() -> None:
    conn = ServerConnection(ServerSettings("mx.test"))
    with pytest.raises(ProtocolUsageError):
        conn.respond(R.OK)
    conn.receive_data(b"EHLO c\r\n")
    conn.next_event()
    with pytest.raises(ProtocolUsageError):
        conn.respond(R.OK)


def test_whole_session_in_one_write() -> None:
    wire = Wire()
    script = b"EHLO c\r\n"
    for n in range(3):
        script += b"MAIL FROM:<s@example.com>\r\nRCPT TO:<r%d@example.net>\r\nDATA\r\nbody %d\r\n.\r\n" % (
            n,
            n,
        )
    replies = wire.send(script + b"QUIT\r\n")
    assert replies.count(str(R.queued("Q1"))) == 3
    assert replies[-1] == "221 2.0.0 mx.test closing connection"
    assert sum(isinstance(e, EndOfData) for e in wire.events) == 3
    assert isinstance(wire.events[-1], Quit)


# -- line limits -------------------------------------------------------------------------------------


def test_command_line_limit_is_512_octets_with_crlf() -> None:
    line = b"NOOP " + b"x" * (limits.COMMAND_LINE_MAX - 7) + b"\r\n"
    assert len(line) == 512
    assert Wire().send(line) == [str(R.OK)]
    longer = b"NOOP " + b"x" * (limits.COMMAND_LINE_MAX - 6) + b"\r\n"
    assert Wire().send(longer) == [str(R.LINE_TOO_LONG)]


@pytest.mark.parametrize("pieces", [1, 7, 100, 700])
def test_an_over_long_line_is_drained_not_interpreted(pieces: int) -> None:
    stream = b"NOOP " + b"x" * 600 + b"\rQUIT\r\n" + b"y" * 5000 + b" QUIT\r\nNOOP\r\n"
    wire = Wire()
    size = -(-len(stream) // pieces)
    replies = wire.send(*(stream[i : i + size] for i in range(0, len(stream), size)))
    assert replies == [str(R.LINE_TOO_LONG), str(R.LINE_TOO_LONG), str(R.OK)]
    assert not wire.conn.closing


def test_a_long_line_without_end_is_not_buffered() -> None:
    wire = Wire()
    for _ in range(100):
        wire.send(b"z" * 10_000)
    assert len(wire.conn._buf) == 0
    assert wire.send(b"\r\nNOOP\r\n") == [str(R.LINE_TOO_LONG), str(R.OK)]


def test_mail_and_auth_lines_get_their_extension_allowance() -> None:
    wire = ready()
    auth_param = b"AUTH=" + b"x" * 900
    assert wire.send(b"MAIL FROM:<s@example.com> " + auth_param + b"\r\n") == [str(R.SENDER_OK)]
    too_long = b"MAIL FROM:<s@example.com> AUTH=" + b"x" * limits.MAIL_COMMAND_LINE_MAX + b"\r\n"
    assert ready().send(too_long) == [str(R.LINE_TOO_LONG)]
    settings = ServerSettings("mx.test", tls_active=True, auth_mechanisms=("PLAIN",))
    wire = ready(settings)
    long_password = "p" * 8000
    assert wire.send(f"AUTH PLAIN {plain('alice', long_password)}\r\n".encode()) == [str(R.AUTH_FAILED)]
    assert wire.events == [AuthAttempt("PLAIN", "alice", long_password)]


# -- STARTTLS (RFC 3207) -----------------------------------------------------------------------------


def test_starttls_discards_pipelined_commands_and_resets_the_session() -> None:
    settings = ServerSettings("mx.test", tls_available=True, auth_mechanisms=("PLAIN",))
    wire = ready(settings)
    # CVE-2011-0411: a command injected behind STARTTLS must not run inside the TLS session.
    assert wire.send(b"STARTTLS\r\nMAIL FROM:<evil@example.com>\r\n") == [str(R.TLS_READY)]
    assert wire.take_events() == [StartTls()]
    assert wire.conn.in_data is False and wire.conn.state.value == "tls-pending"
    assert wire.send(b"RCPT TO:<more@evil.example>\r\n") == []  # plaintext before the handshake
    wire.conn.tls_started()
    assert wire.conn.tls_active and wire.conn.ehlo_name is None and wire.conn.state is State.INITIAL
    assert wire.send(b"MAIL FROM:<s@example.com>\r\n") == [str(R.NEED_EHLO)]
    keywords = [r[4:] for r in wire.send(b"EHLO c\r\n")]
    assert "STARTTLS" not in keywords and "AUTH PLAIN" in keywords
    assert wire.send(b"STARTTLS\r\n") == [str(R.TLS_ALREADY_ACTIVE)]
    assert wire.events == [Ehlo("c", True)]


def test_starttls_refusals() -> None:
    assert ready().send(b"STARTTLS\r\n") == [str(R.NOT_IMPLEMENTED)]
    assert ready(ServerSettings("mx.test", tls_available=True)).send(b"STARTTLS now\r\n") == [
        str(R.NO_ARGUMENTS)
    ]
    with pytest.raises(ProtocolUsageError):
        ready().conn.tls_started()


def test_tls_started_forgets_authentication() -> None:
    settings = ServerSettings(
        "mx.test", tls_available=True, auth_mechanisms=("PLAIN",), auth_requires_tls=False
    )
    wire = ready(settings)
    wire.send(f"AUTH PLAIN {plain('alice', 'secret')}\r\n".encode())
    assert wire.conn.authenticated_user == "alice"
    wire.send(b"STARTTLS\r\n")
    wire.conn.tls_started()
    assert wire.conn.authenticated_user is None


# -- AUTH (RFC 4954) ---------------------------------------------------------------------------------

AUTH_SETTINGS = ServerSettings("mx.test", tls_active=True, auth_mechanisms=("PLAIN", "LOGIN"))


def test_auth_plain_with_initial_response() -> None:
    wire = ready(AUTH_SETTINGS)
    assert wire.send(f"AUTH PLAIN {plain('alice', 'secret')}\r\n".encode()) == [str(R.AUTH_OK)]
    assert wire.events == [AuthAttempt("PLAIN", "alice", "secret")]
    assert wire.conn.authenticated_user == "alice"
    assert wire.send(f"AUTH PLAIN {plain('alice', 'secret')}\r\n".encode()) == [str(R.ALREADY_AUTHENTICATED)]


def test_auth_plain_after_an_empty_challenge() -> None:
    wire = ready(AUTH_SETTINGS)
    assert wire.send(b"AUTH PLAIN\r\n") == ["334 "]
    assert wire.conn.state.value == "auth"
    assert wire.send(f"{plain('alice', 'wrong')}\r\n".encode()) == [str(R.AUTH_FAILED)]
    assert wire.conn.authenticated_user is None and wire.conn.state is State.READY
    assert wire.send(f"AUTH PLAIN {plain('alice', 'secret', authzid='alice')}\r\n".encode()) == [
        str(R.AUTH_OK)
    ]


def test_auth_login_challenges() -> None:
    wire = ready(AUTH_SETTINGS)
    assert wire.send(b"AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"]
    assert wire.send(base64.b64encode(b"alice") + b"\r\n") == ["334 UGFzc3dvcmQ6"]
    assert wire.send(base64.b64encode(b"secret") + b"\r\n") == [str(R.AUTH_OK)]
    assert wire.events == [AuthAttempt("LOGIN", "alice", "secret")]


def test_auth_login_with_initial_username() -> None:
    wire = ready(AUTH_SETTINGS)
    assert wire.send(b"auth login " + base64.b64encode(b"alice") + b"\r\n") == ["334 UGFzc3dvcmQ6"]
    assert wire.send(base64.b64encode(b"secret") + b"\r\n") == [str(R.AUTH_OK)]


@pytest.mark.parametrize(
    ("script", "reply"),
    [
        (b"AUTH LOGIN\r\n*\r\n", R.AUTH_CANCELLED),
        (b"AUTH PLAIN\r\n*\r\n", R.AUTH_CANCELLED),
        (b"AUTH PLAIN\r\n!!notbase64\r\n", R.AUTH_BAD_RESPONSE),
        (b"AUTH PLAIN bm9udWxscw==\r\n", R.AUTH_BAD_RESPONSE),
        (b"AUTH PLAIN " + base64.b64encode(b"\xff\0a\0b") + b"\r\n", R.AUTH_BAD_RESPONSE),
        (b"AUTH PLAIN " + base64.b64encode(b"bob\0alice\0secret") + b"\r\n", R.AUTH_FAILED),
        (b"AUTH CRAM-MD5\r\n", R.AUTH_MECHANISM_UNSUPPORTED),
        (b"AUTH\r\n", R.PARAM_SYNTAX),
        (b"AUTH PLAIN a b\r\n", R.PARAM_SYNTAX),
    ],
)
def test_auth_failures(script: bytes, reply: Reply) -> None:
    wire = ready(AUTH_SETTINGS)
    assert wire.send(script)[-1] == str(reply)
    assert wire.conn.authenticated_user is None and wire.conn.state is State.READY
    assert wire.events == []


def test_auth_refused_without_tls_or_configuration_or_in_a_transaction() -> None:
    no_tls = replace(AUTH_SETTINGS, tls_active=False, tls_available=True)
    assert ready(no_tls).send(b"AUTH PLAIN\r\n") == [str(R.ENCRYPTION_REQUIRED)]
    assert ready().send(b"AUTH PLAIN\r\n") == [str(R.NOT_IMPLEMENTED)]
    assert in_transaction(AUTH_SETTINGS).send(b"AUTH PLAIN\r\n") == [str(R.BAD_SEQUENCE)]


def test_an_over_long_auth_response_cancels_the_exchange() -> None:
    wire = ready(AUTH_SETTINGS)
    wire.send(b"AUTH PLAIN\r\n")
    assert wire.send(b"A" * (limits.AUTH_LINE_MAX + 10) + b"\r\nNOOP\r\n") == [
        str(R.LINE_TOO_LONG),
        str(R.OK),
    ]


# -- closing -----------------------------------------------------------------------------------------


def test_quit_closes_and_later_input_is_ignored() -> None:
    wire = ready()
    assert wire.send(b"QUIT\r\nNOOP\r\n") == ["221 2.0.0 mx.test closing connection"]
    assert wire.take_events() == [Quit()]
    assert wire.conn.closing
    assert wire.send(b"NOOP\r\n", b"") == []
    assert wire.events == []


def test_eof_is_connection_lost_and_closes() -> None:
    wire = in_transaction()
    wire.send(b"DATA\r\npartial body")
    assert wire.conn.in_data
    wire.send(b"")
    assert isinstance(wire.events[-1], ConnectionLost)
    assert wire.conn.closing and not wire.conn.in_data
    assert wire.conn.next_event() is NEED_DATA


def test_adapter_replies() -> None:
    wire = in_transaction()
    wire.conn.send_reply(R.OK)
    assert not wire.conn.closing and wire.conn.state is State.RCPT
    wire.conn.send_reply(R.TIMEOUT)
    assert wire.conn.closing
    assert lines(wire.conn.data_to_send()) == [str(R.OK), "421 4.4.2 Timeout, closing connection"]
    assert wire.send(b"DATA\r\n") == []


def test_a_421_decision_answer_closes() -> None:
    wire = ready(policy=lambda e: R.SERVICE_UNAVAILABLE)
    assert wire.send(b"MAIL FROM:<s@example.com>\r\nNOOP\r\n") == [str(R.SERVICE_UNAVAILABLE)]
    assert wire.conn.closing


def test_refusing_greeting_allows_only_quit() -> None:
    conn = ServerConnection(ServerSettings("mx.test"))
    conn.greet(R.ACCESS_DENIED)
    wire = Wire(greet=False)
    wire.conn = conn
    assert lines(conn.data_to_send()) == ["554 5.7.1 Access denied for your network"]
    assert wire.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nQUIT\r\n") == [
        str(R.BAD_SEQUENCE),
        str(R.BAD_SEQUENCE),
        "221 2.0.0 mx.test closing connection",
    ]


def test_data_begins_with_354() -> None:
    wire = in_transaction()
    assert wire.send(b"DATA\r\n") == ["354 End data with <CR><LF>.<CR><LF>"]
    assert wire.take_events() == [DataBegin()]
    assert wire.conn.in_data
    assert in_transaction().send(b"DATA now\r\n") == [str(R.NO_ARGUMENTS)]


@pytest.mark.parametrize(
    "kwargs",
    [dict(hostname=""), dict(max_size=-1), dict(max_recipients=0), dict(auth_mechanisms=("CRAM-MD5",))],
)
def test_settings_are_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ServerSettings(**{"hostname": "mx.test", **kwargs})  # type: ignore[arg-type]
