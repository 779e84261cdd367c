"""Reply values and the catalogue."""

from __future__ import annotations

import re

import pytest

from zonerelay.smtp.replies import R, Reply

CATALOGUE = {name: value for name, value in vars(R).items() if isinstance(value, Reply)}


def test_single_line_wire_form() -> None:
    assert Reply(250, "2.0.0", "Ok").to_bytes() == b"250 2.0.0 Ok\r\n"
    assert R.greeting("mx.test").to_bytes() == b"220 mx.test ESMTP zonerelay\r\n"
    assert R.auth_challenge("").to_bytes() == b"334 \r\n"


def test_multi_line_wire_form() -> None:
    assert (
        R.ehlo("mx.test", ("PIPELINING", "SIZE")).to_bytes()
        == b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE\r\n"
    )
    reply = Reply(550, "5.7.1", ("Refused.", "See the policy."))
    assert reply.to_bytes() == b"550-5.7.1 Refused.\r\n550 5.7.1 See the policy.\r\n"
    assert str(reply) == "550 5.7.1 Refused. See the policy."


def test_text_cannot_inject_a_second_reply() -> None:
    assert Reply(550, "5.0.0", "a\r\n250 ok").to_bytes() == b"550 5.0.0 a  250 ok\r\n"


def test_classes() -> None:
    assert R.OK.is_positive and not R.OK.is_transient and not R.OK.is_permanent
    assert R.START_DATA.is_positive is False
    assert R.STORE_FAILED.is_transient and not R.STORE_FAILED.is_permanent
    assert R.AUTH_FAILED.is_permanent and not R.AUTH_FAILED.is_positive


def test_str_is_the_wire_line() -> None:
    assert str(R.queued("ABC")) == "250 2.0.0 Ok: queued as ABC"
    assert str(R.START_DATA) == "354 End data with <CR><LF>.<CR><LF>"


@pytest.mark.parametrize("code", [0, 99, 600])
def test_codes_are_checked(code: int) -> None:
    with pytest.raises(ValueError):
        Reply(code, None, "x")


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_catalogue_status_agrees_with_the_code(name: str) -> None:
    """RFC 3463 2: the class digit of the enhanced status equals the first digit of the code."""
    reply = CATALOGUE[name]
    if reply.code in (220, 354, 334) and reply.status is None:
        return  # RFC 2034: greeting and intermediate replies carry no enhanced status
    assert reply.status is not None and re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", reply.status), name
    assert reply.status[0] == str(reply.code)[0], name
    assert reply.to_bytes().startswith(f"{reply.code} {reply.status} ".encode())


@pytest.mark.parametrize(
    ("reply", "code", "status"),
    [
        (R.SERVICE_UNAVAILABLE, 421, "4.3.2"),
        (R.TIMEOUT, 421, "4.4.2"),
        (R.STORE_FAILED, 451, "4.3.0"),
        (R.TOO_MANY_RECIPIENTS, 452, "4.5.3"),
        (R.SYNTAX_ERROR, 500, "5.5.2"),
        (R.LINE_TOO_LONG, 500, "5.5.6"),
        (R.PARAM_SYNTAX, 501, "5.5.4"),
        (R.BAD_SENDER_SYNTAX, 501, "5.1.7"),
        (R.BAD_RCPT_SYNTAX, 501, "5.1.3"),
        (R.NOT_IMPLEMENTED, 502, "5.5.1"),
        (R.BAD_SEQUENCE, 503, "5.5.1"),
        (R.PARAM_NOT_IMPLEMENTED, 555, "5.5.4"),
        (R.AUTH_REQUIRED, 530, "5.7.0"),
        (R.AUTH_OK, 235, "2.7.0"),
        (R.AUTH_FAILED, 535, "5.7.8"),
        (R.ENCRYPTION_REQUIRED, 538, "5.7.11"),
        (R.TLS_READY, 220, "2.0.0"),
        (R.TLS_NOT_AVAILABLE, 454, "4.7.0"),
        (R.MESSAGE_TOO_BIG, 552, "5.3.4"),
        (R.EIGHT_BIT_NOT_DECLARED, 554, "5.6.1"),
        (R.UTF8_NOT_DECLARED, 553, "5.6.7"),
        (R.RELAY_DENIED, 554, "5.7.1"),
        (R.ACCESS_DENIED, 554, "5.7.1"),
        (R.TOO_MANY_ERRORS, 421, "4.7.0"),
        (R.HEADER_TOO_BIG, 552, "5.3.4"),
        (R.VRFY, 252, "2.5.0"),
        (R.HELP, 214, "2.0.0"),
        (R.closing("h"), 221, "2.0.0"),
    ],
)
def test_the_catalogue_uses_the_agreed_codes(reply: Reply, code: int, status: str) -> None:
    assert (reply.code, reply.status) == (code, status)
