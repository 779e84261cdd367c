"""AUTH PLAIN / LOGIN exchanges on their own."""

from __future__ import annotations

import base64

import pytest

from zonerelay.smtp.replies import R
from zonerelay.smtp.sasl import Credentials, LoginExchange, PlainExchange, SaslFailure, decode_response


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_decode_response() -> None:
    assert decode_response("=") == ""
    assert decode_response(b64("ünï")) == "ünï"
    for bad, reply in (
        ("*", R.AUTH_CANCELLED),
        ("abc", R.AUTH_BAD_RESPONSE),
        ("ü", R.AUTH_BAD_RESPONSE),
        (base64.b64encode(b"\xff").decode(), R.AUTH_BAD_RESPONSE),
    ):
        with pytest.raises(SaslFailure) as failure:
            decode_response(bad)
        assert failure.value.reply == reply


def test_plain() -> None:
    assert PlainExchange().start(None) == R.auth_challenge("")
    assert PlainExchange().start(b64("\0alice\0pw")) == Credentials("alice", "pw")
    assert PlainExchange().step(b64("alice\0alice\0pw")) == Credentials("alice", "pw")
    for bad in (b64("alice\0pw"), b64("\0\0pw"), "="):
        with pytest.raises(SaslFailure):
            PlainExchange().step(bad)


def test_login() -> None:
    exchange = LoginExchange()
    assert exchange.start(None) == R.auth_challenge("VXNlcm5hbWU6")
    assert exchange.step(b64("alice")) == R.auth_challenge("UGFzc3dvcmQ6")
    assert exchange.step(b64("pw")) == Credentials("alice", "pw")
    assert LoginExchange().start(b64("bob")) == R.auth_challenge("UGFzc3dvcmQ6")


def test_credentials_hide_the_password() -> None:
    assert "pw" not in repr(Credentials("alice", "pw"))
