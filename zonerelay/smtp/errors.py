"""Errors raised by the outbound SMTP client.

Delivery decides between "defer" and "bounce" from the type and the remote reply, never by
matching message text, so every error carries the stage it happened in, the reply (when the
peer sent one) and whether retrying later can help (``transient``).
"""

from __future__ import annotations

from typing import Literal

from zonerelay.smtp.replies import Reply

Stage = Literal["connect", "ehlo", "starttls", "mail", "rcpt", "data", "message", "rset", "quit", "protocol"]


class SmtpClientError(Exception):
    """Base class: something went wrong while talking to a remote SMTP server."""

    def __init__(self, stage: Stage, message: str, reply: Reply | None = None) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage: Stage = stage
        self.message = message
        self.reply = reply

    @property
    def transient(self) -> bool:
        """True when a later attempt may succeed (4xx, timeouts, dropped connections)."""
        if self.reply is None:
            return True
        return self.reply.code < 500


class SmtpReplyError(SmtpClientError):
    """The server answered a command with a reply we cannot proceed with."""

    def __init__(self, stage: Stage, reply: Reply, message: str | None = None) -> None:
        text = " ".join(reply.lines)
        status = f" {reply.status}" if reply.status else ""
        super().__init__(stage, message or f"{reply.code}{status} {text}".rstrip(), reply)


class LocalRefusal(SmtpReplyError):
    """We refused before sending: the message cannot go to this server (SIZE, SMTPUTF8).

    The reply is synthesised locally so that bounce handling treats it like a remote one.
    """


class SmtpTimeout(SmtpClientError):
    """The server did not answer (or accept our data) within the stage's time limit."""

    def __init__(self, stage: Stage, timeout: float) -> None:
        super().__init__(stage, f"timed out after {timeout:g}s")
        self.timeout = timeout


class SmtpConnectionError(SmtpClientError):
    """The connection could not be made or was dropped."""


class TlsHandshakeError(SmtpClientError):
    """STARTTLS was accepted but the TLS handshake failed; the connection is unusable."""


class SmtpProtocolError(SmtpClientError):
    """The server sent something that is not SMTP (bad reply syntax, over-long lines)."""

    def __init__(self, message: str, stage: Stage = "protocol") -> None:
        super().__init__(stage, message)
