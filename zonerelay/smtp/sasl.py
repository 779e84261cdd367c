"""The server side of AUTH PLAIN (RFC 4616) and AUTH LOGIN, as sans-IO exchanges (RFC 4954).

An exchange is fed the optional initial response, then each client line; it answers with the next
334 challenge to send, with the ``Credentials`` it collected, or raises ``SaslFailure`` carrying the
reply.  Checking the credentials is not its business: the adapter decides on the ``AuthAttempt``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Protocol

from zonerelay.smtp.replies import R, Reply

__all__ = ["MECHANISMS", "Credentials", "Exchange", "SaslFailure", "decode_response"]


class SaslFailure(Exception):
    """The exchange is over without credentials; ``reply`` says why (never the exception text)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)


class Exchange(Protocol):
    """One running SASL exchange."""

    def start(self, initial: str | None) -> Reply | Credentials:
        """Begin, with the initial response from the AUTH line if the client sent one."""

    def step(self, line: str) -> Reply | Credentials:
        """Consume one client response line."""


def decode_response(line: str) -> str:
    """Decode one base64 client response (RFC 4954 4): "*" cancels, "=" is the empty response."""
    if line == "*":
        raise SaslFailure(R.AUTH_CANCELLED)
    if line == "=":
        return ""
    try:
        raw = base64.b64decode(line.encode("ascii"), validate=True)
        return raw.decode("utf-8")
    except (UnicodeError, binascii.Error, ValueError):
        raise SaslFailure(R.AUTH_BAD_RESPONSE) from None


class PlainExchange:
    """PLAIN: one message ``[authzid] NUL authcid NUL passwd`` (RFC 4616 2)."""

    def start(self, initial: str | None) -> Reply | Credentials:
        if initial is None:
            return R.auth_challenge("")  # RFC 4954 4: an empty challenge asks for the response
        return self.step(initial)

    def step(self, line: str) -> Reply | Credentials:
        parts = decode_response(line).split("\0")
        if len(parts) != 3 or not parts[1]:
            raise SaslFailure(R.AUTH_BAD_RESPONSE)
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            # Acting as another identity (proxy authorization) is not supported.
            raise SaslFailure(R.AUTH_FAILED)
        return Credentials(authcid, password)


class LoginExchange:
    """LOGIN (draft-murchison-sasl-login): "Username:" then "Password:" challenges."""

    USERNAME = R.auth_challenge(base64.b64encode(b"Username:").decode())
    PASSWORD = R.auth_challenge(base64.b64encode(b"Password:").decode())

    def __init__(self) -> None:
        self._username: str | None = None

    def start(self, initial: str | None) -> Reply | Credentials:
        if initial is None:
            return self.USERNAME
        return self.step(initial)

    def step(self, line: str) -> Reply | Credentials:
        value = decode_response(line)
        if self._username is None:
            self._username = value
            return self.PASSWORD
        return Credentials(self._username, value)


MECHANISMS: dict[str, type[PlainExchange] | type[LoginExchange]] = {
    "PLAIN": PlainExchange,
    "LOGIN": LoginExchange,
}
