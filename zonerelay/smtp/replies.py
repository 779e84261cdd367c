"""SMTP replies as values, and the catalogue of every reply the server core sends.

Why a catalogue: each refusal is part of the interface (the right code and RFC 3463 enhanced status
for the client's retry/bounce logic, and a fixed text an operator can grep for).  Scattered ``"250 OK"``
literals drift apart; exception text sent to a peer leaks internals.  The core only ever sends values
from here (or ones the adapter built with the same type).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["R", "Reply"]


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: code, optional enhanced status code (RFC 3463) and one or more lines of text.

    ``status`` is None where RFC 2034 says not to use one (the 220 greeting, the EHLO response and
    the 3xx intermediate replies) and for replies parsed from peers that did not send one.
    """

    code: int
    status: str | None
    text: str | tuple[str, ...]

    def __post_init__(self) -> None:
        if not 100 <= self.code <= 599:
            raise ValueError(f"SMTP reply code out of range: {self.code}")

    @property
    def lines(self) -> tuple[str, ...]:
        """The text as a tuple of lines, whichever shape it was given in."""
        return (self.text,) if isinstance(self.text, str) else self.text

    @property
    def is_positive(self) -> bool:
        """2xx: the command completed (a 3xx intermediate reply is not a final success)."""
        return 200 <= self.code < 300

    @property
    def is_transient(self) -> bool:
        """4xx: the same command may succeed later (defer, do not bounce)."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """5xx: retrying the same command will not help."""
        return self.code >= 500

    def to_bytes(self) -> bytes:
        """Wire form, RFC 5321 4.2.1: ``code-text`` on every line but the last, ``code text`` on it.

        CR and LF inside the text are replaced by spaces: a reply must never be able to inject a
        second reply (or end early) whatever text it was built from.
        """
        lines = self.lines or ("",)
        prefix = f"{self.code} {self.status} " if self.status else f"{self.code} "
        dash = f"{self.code}-{self.status} " if self.status else f"{self.code}-"
        last = len(lines) - 1
        out = "".join((prefix if i == last else dash) + _clean(line) + "\r\n" for i, line in enumerate(lines))
        return out.encode("utf-8")

    def __str__(self) -> str:
        status = f" {self.status}" if self.status else ""
        return f"{self.code}{status} {' '.join(self.lines)}".rstrip()


def _clean(text: str) -> str:
    if "\r" in text or "\n" in text:
        return text.replace("\r", " ").replace("\n", " ")
    return text


class R:
    """The reply catalogue.  Constants for fixed replies, static methods for parametrised ones."""

    # -- connection ---------------------------------------------------------------------------------
    @staticmethod
    def greeting(hostname: str) -> Reply:
        """220 banner (RFC 5321 4.2; no enhanced status per RFC 2034 3)."""
        return Reply(220, None, f"{hostname} ESMTP zonerelay")

    @staticmethod
    def closing(hostname: str) -> Reply:
        return Reply(221, "2.0.0", f"{hostname} closing connection")

    @staticmethod
    def ehlo(hostname: str, keywords: tuple[str, ...]) -> Reply:
        """250 EHLO response: first line names us, then one extension keyword per line."""
        return Reply(250, None, (hostname, *keywords))

    @staticmethod
    def helo(hostname: str) -> Reply:
        return Reply(250, None, hostname)

    SERVICE_UNAVAILABLE = Reply(421, "4.3.2", "Service not available, closing connection")
    TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")
    TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
    ACCESS_DENIED = Reply(554, "5.7.1", "Access denied for your network")

    # -- success ------------------------------------------------------------------------------------
    OK = Reply(250, "2.0.0", "Ok")
    SENDER_OK = Reply(250, "2.1.0", "Sender ok")
    RECIPIENT_OK = Reply(250, "2.1.5", "Recipient ok")

    @staticmethod
    def queued(queue_id: str) -> Reply:
        return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")

    START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
    VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
    HELP = Reply(214, "2.0.0", "Supported: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH")
    TLS_READY = Reply(220, "2.0.0", "Ready to start TLS")

    # -- AUTH (RFC 4954) -----------------------------------------------------------------------------
    @staticmethod
    def auth_challenge(challenge: str) -> Reply:
        """334 with a base64 challenge ("" for the empty one PLAIN uses)."""
        return Reply(334, None, challenge)

    AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
    AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
    AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
    AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
    AUTH_BAD_RESPONSE = Reply(501, "5.5.2", "Cannot decode response")
    AUTH_MECHANISM_UNSUPPORTED = Reply(504, "5.5.4", "Unrecognized authentication type")
    ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
    ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")

    # -- TLS (RFC 3207) -----------------------------------------------------------------------------
    TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available due to temporary reason")
    TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "TLS already active")

    # -- transient failures -------------------------------------------------------------------------
    STORE_FAILED = Reply(451, "4.3.0", "Temporary failure storing the message, try again later")
    TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")

    # -- syntax and sequence (RFC 5321 4.2.4, RFC 3463 5.5.x) ---------------------------------------
    SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error, command unrecognized")
    LINE_TOO_LONG = Reply(500, "5.5.6", "Line too long")
    PARAM_SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
    EHLO_SYNTAX = Reply(501, "5.5.4", "Syntax: EHLO hostname")
    MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
    RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
    NO_ARGUMENTS = Reply(501, "5.5.4", "Syntax error, no parameters allowed")
    BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
    BAD_RCPT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
    NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
    BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
    NEED_EHLO = Reply(503, "5.5.1", "Send EHLO or HELO first")
    NEED_MAIL = Reply(503, "5.5.1", "Need MAIL before RCPT")
    NEED_RCPT = Reply(503, "5.5.1", "Need RCPT before DATA")
    NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
    PARAM_NOT_IMPLEMENTED = Reply(555, "5.5.4", "Unsupported parameter")
    NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")

    # -- message content ----------------------------------------------------------------------------
    MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
    HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header section too large")
    # RFC 5321 2.3.8 allows only CRLF as a line ending in DATA; a bare CR or LF is how SMTP smuggling
    # (CVE-2023-51764/-51765/-51766) hides a second message.  554 is the reply for a failed DATA
    # transaction (4.2.5); 5.6.0 ("other media error", RFC 3463) is the closest *registered* status:
    # 5.6.11, seen in some servers, is not in the IANA registry.
    BARE_LINE_ENDING = Reply(554, "5.6.0", "Bare CR or LF in message; lines must end with CRLF")
    EIGHT_BIT_NOT_DECLARED = Reply(554, "5.6.1", "8-bit data requires BODY=8BITMIME or SMTPUTF8")
    UTF8_NOT_DECLARED = Reply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")

    # -- policy ---------------------------------------------------------------------------------------
    RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
