"""RFC 5321 / 6531 argument grammar."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zonerelay.smtp.grammar import (
    CommandSyntaxError,
    GrammarError,
    ParamSyntaxError,
    PathSyntaxError,
    is_valid_ehlo_name,
    parse_mail_from,
    parse_params,
    parse_rcpt_to,
)


@pytest.mark.parametrize(
    ("argument", "address", "params"),
    [
        ("FROM:<>", "", {}),
        ("from:<a@b.example>", "a@b.example", {}),
        ("FROM:  <a@b.example>", "a@b.example", {}),
        (
            "FROM:<a.b+tag@b.example> SIZE=10  BODY=8BITMIME",
            "a.b+tag@b.example",
            {"SIZE": "10", "BODY": "8BITMIME"},
        ),
        ('FROM:<"a b\\"c"@b.example>', '"a b\\"c"@b.example', {}),
        ('FROM:<"a>b"@b.example>', '"a>b"@b.example', {}),
        ("FROM:<@x.example,@y.example:a@b.example>", "a@b.example", {}),
        ("FROM:<a@[127.0.0.1]>", "a@[127.0.0.1]", {}),
        ("FROM:<a@[IPv6:::1]>", "a@[IPv6:::1]", {}),
        ("FROM:<x@xn--bcher-kva.example>", "x@xn--bcher-kva.example", {}),
        ("FROM:<ü@bücher.example> SMTPUTF8", "ü@bücher.example", {"SMTPUTF8": None}),
        ("FROM:<a@b> smtputf8 Auth=<>", "a@b", {"SMTPUTF8": None, "AUTH": "<>"}),
    ],
)
def test_mail_from(argument: str, address: str, params: dict[str, str | None]) -> None:
    assert parse_mail_from(argument) == (address, params)


@pytest.mark.parametrize(
    ("argument", "error"),
    [
        ("TO:<a@b>", CommandSyntaxError),
        ("FROM", CommandSyntaxError),
        ("FROM:", PathSyntaxError),
        ("FROM:a@b", PathSyntaxError),
        ("FROM:<a>", PathSyntaxError),
        ("FROM:<a@b>x", PathSyntaxError),
        ("FROM:<a..b@c>", PathSyntaxError),
        ("FROM:<.a@c>", PathSyntaxError),
        ("FROM:<a@b.>", PathSyntaxError),
        ("FROM:<a@b-.c>", PathSyntaxError),
        ("FROM:<a@[1.2.3]>", PathSyntaxError),
        ("FROM:<a@[IPv6:fe80::1%eth0]>", PathSyntaxError),
        ("FROM:<a@[tag:x]>", PathSyntaxError),
        ('FROM:<"a\rb"@c>', PathSyntaxError),
        ("FROM:<a\udcff@c>", PathSyntaxError),
        ("FROM:<a@" + "b" * 64 + ".c>", PathSyntaxError),
        ("FROM:<a@" + "b." * 128 + "c>", PathSyntaxError),
        ("FROM:<a@b> SIZE=", ParamSyntaxError),
        ("FROM:<a@b> -X=1", ParamSyntaxError),
        ("FROM:<a@b> X=a=b", ParamSyntaxError),
        ("FROM:<a@b> X=1 x=2", ParamSyntaxError),
        ("FROM:<a@b> X=\x01", ParamSyntaxError),
    ],
)
def test_mail_from_errors(argument: str, error: type[GrammarError]) -> None:
    with pytest.raises(error):
        parse_mail_from(argument)


def test_rcpt_to() -> None:
    assert parse_rcpt_to("TO:<postmaster>") == ("postmaster", {})
    assert parse_rcpt_to("to:<POSTMASTER> X=1") == ("POSTMASTER", {"X": "1"})
    assert parse_rcpt_to("TO:<r@example.net>") == ("r@example.net", {})
    for bad in ("TO:<>", "TO:<postmaster>x", "FROM:<a@b>"):
        with pytest.raises(GrammarError):
            parse_rcpt_to(bad)


def test_params() -> None:
    assert parse_params("") == {}
    assert parse_params(" A=1  b c-d=x ") == {"A": "1", "B": None, "C-D": "x"}


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("mx.example", True),
        ("[192.0.2.1]", True),
        ("my_host", True),
        ("", False),
        ("a b", False),
        ("a\x7f", False),
        ("x\udc80", False),
    ],
)
def test_ehlo_names(name: str, valid: bool) -> None:
    assert is_valid_ehlo_name(name) is valid


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=200))
def test_any_text_either_parses_or_raises_a_grammar_error(text: str) -> None:
    for parse in (parse_mail_from, parse_rcpt_to):
        for argument in (text, "FROM:" + text, "TO:" + text, "FROM:<" + text, "TO:<a@b> " + text):
            with contextlib.suppress(GrammarError):
                parse(argument)


ATOM = st.text(alphabet="abcxyz0189!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=10)
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@settings(max_examples=200, deadline=None, database=None)
@given(
    local=st.lists(ATOM, min_size=1, max_size=4).map(".".join),
    domain=st.lists(LABEL, min_size=1, max_size=4).map(".".join),
)
def test_valid_addresses_round_trip(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    assert parse_mail_from(f"FROM:<{address}>") == (address, {})
    assert parse_rcpt_to(f"TO:<{address}>") == (address, {})
