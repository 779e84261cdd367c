"""Outbound SMTP client: a thin asyncio adapter around ``client_protocol``.

Hand-written rather than aiosmtplib or smtplib because both take the whole message as one
``bytes``/``str`` value: neither streams a body from an async iterator with back-pressure,
which a relay holding multi-megabyte messages for hundreds of connections needs. Here the body
flows chunk by chunk from the store through ``DotStuffer`` to the socket, each write awaiting
``drain()``. Every read and write is bounded by the timeout of its stage, and every failure is
an ``SmtpClientError`` that says whether retrying later can help.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass

from zonerelay.smtp import client_protocol as proto
from zonerelay.smtp.client_protocol import Capabilities, DotStuffer, ReplyParser
from zonerelay.smtp.errors import (
    LocalRefusal,
    SmtpClientError,
    SmtpConnectionError,
    SmtpReplyError,
    SmtpTimeout,
    Stage,
    TlsHandshakeError,
)
from zonerelay.smtp.replies import Reply

_READ_SIZE = 65536


def insecure_client_context() -> ssl.SSLContext:
    """TLS context for opportunistic STARTTLS: encrypt, but do not verify certificates.

    MX certificates are rarely valid for the MX name (RFC 7435 opportunistic security); a
    verifying context would push those deliveries back to plaintext, which is worse.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """Outcome of one mail transaction.

    ``data_reply`` is the reply to the final dot, or to the DATA command when that was refused;
    None when no recipient was accepted (then DATA was never sent).
    """

    mail_reply: Reply
    rcpt_replies: dict[str, Reply]
    data_reply: Reply | None

    @property
    def accepted(self) -> list[str]:
        return [rcpt for rcpt, reply in self.rcpt_replies.items() if 200 <= reply.code < 300]

    @property
    def delivered(self) -> list[str]:
        """Recipients the server took responsibility for."""
        if self.data_reply is None or not 200 <= self.data_reply.code < 300:
            return []
        return self.accepted


class SmtpClient:
    """One SMTP connection to one server; use ``connect`` to make it."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        host: str,
        helo_name: str,
        command_timeout: float,
        data_timeout: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host
        self._helo_name = helo_name
        self._command_timeout = command_timeout
        self._data_timeout = data_timeout
        self._parser = ReplyParser()
        self._capabilities = Capabilities()
        self._broken = False
        self._tls_version: str | None = None
        self._tls_cipher: str | None = None
        self._messages_sent = 0
        self._last_used = time.monotonic()
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("sockname")
        self._peer: tuple[str, int] = (str(peer[0]), int(peer[1])) if peer else (host, 0)
        self._local: str = str(sock[0]) if sock else ""

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        local_address: str | None = None,
        helo_name: str,
        connect_timeout: float,
        command_timeout: float,
        data_timeout: float,
    ) -> SmtpClient:
        """Open a TCP connection (from ``local_address`` if given) and read the 220 greeting."""
        local_addr = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
        except TimeoutError:
            raise SmtpTimeout("connect", connect_timeout) from None
        except OSError as exc:
            raise SmtpConnectionError("connect", f"cannot connect to {host}:{port}: {exc}") from exc
        client = cls(
            reader,
            writer,
            host=host,
            helo_name=helo_name,
            command_timeout=command_timeout,
            data_timeout=data_timeout,
        )
        try:
            greeting = await client._read_reply("connect", connect_timeout + command_timeout)
            if greeting.code != 220:
                raise SmtpReplyError("connect", greeting)
        except BaseException:
            client.close()
            raise
        return client

    # -- properties -----------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def peer(self) -> tuple[str, int]:
        return self._peer

    @property
    def local_address(self) -> str:
        return self._local

    @property
    def tls_version(self) -> str | None:
        return self._tls_version

    @property
    def tls_cipher(self) -> str | None:
        return self._tls_cipher

    @property
    def messages_sent(self) -> int:
        return self._messages_sent

    @property
    def last_used(self) -> float:
        """``time.monotonic()`` of the last reply, for idle-connection expiry in the pool."""
        return self._last_used

    @property
    def is_usable(self) -> bool:
        return not self._broken and not self._writer.is_closing()

    # -- commands -------------------------------------------------------------------------

    async def ehlo(self) -> Capabilities:
        """EHLO, falling back to HELO when the server refuses EHLO with 5xx (RFC 5321 3.2)."""
        await self._send(proto.ehlo(self._helo_name), "ehlo")
        reply = await self._read_reply("ehlo", self._command_timeout)
        if reply.code == 250:
            self._capabilities = Capabilities.from_ehlo(reply)
            return self._capabilities
        if reply.code < 500:
            raise SmtpReplyError("ehlo", reply)
        await self._send(proto.helo(self._helo_name), "ehlo")
        reply = await self._read_reply("ehlo", self._command_timeout)
        if reply.code != 250:
            raise SmtpReplyError("ehlo", reply)
        self._capabilities = Capabilities()
        return self._capabilities

    async def starttls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None) -> None:
        """Upgrade to TLS (RFC 3207) and say EHLO again, since earlier capabilities are void.

        A refused STARTTLS raises ``SmtpReplyError`` and leaves the plaintext connection
        usable; a failed handshake raises ``TlsHandshakeError`` and the connection is dead.
        """
        await self._send(proto.STARTTLS, "starttls")
        reply = await self._read_reply("starttls", self._command_timeout)
        if reply.code != 220:
            raise SmtpReplyError("starttls", reply)
        if self._parser.buffered or self._reader.at_eof():
            # Bytes sent before the handshake would be trusted as if they came over TLS
            # (CVE-2011-0411 style response injection).
            self._fail()
            raise TlsHandshakeError("starttls", "server sent data after its 220 reply to STARTTLS")
        if server_hostname is None:
            server_hostname = None if _is_ip(self._host) else self._host
        try:
            await self._writer.start_tls(
                ssl_context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=self._command_timeout,
            )
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            self._fail()
            raise TlsHandshakeError("starttls", f"TLS handshake failed: {exc}") from exc
        ssl_object = self._writer.get_extra_info("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject):
            self._tls_version = ssl_object.version()
            cipher = ssl_object.cipher()
            self._tls_cipher = cipher[0] if cipher else None
        self._capabilities = Capabilities()
        await self.ehlo()

    async def send_message(
        self,
        mail_from: str,
        recipients: list[str],
        body: AsyncIterable[bytes],
        *,
        size: int | None = None,
        body8bit: bool = False,
        smtputf8: bool = False,
    ) -> TransactionResult:
        """Run one transaction: MAIL, RCPT for each recipient, DATA and the body.

        ``body`` yields the message as CRLF text, unstuffed; it is streamed, never joined.
        MAIL refused raises ``SmtpReplyError(stage="mail")``; per-recipient refusals are in
        the result; a 421 anywhere raises and leaves the connection unusable.
        """
        if not recipients:
            raise ValueError("send_message needs at least one recipient")
        self._check_usable("mail")
        caps = self._capabilities
        if size is not None and caps.size is not None and size > caps.size:
            raise LocalRefusal(
                "mail",
                Reply(552, "5.3.4", f"message size {size} exceeds the limit {caps.size} of {self._host}"),
            )
        if smtputf8 and not caps.smtputf8:
            raise LocalRefusal(
                "mail", Reply(553, "5.6.7", f"{self._host} does not support SMTPUTF8 for non-ASCII addresses")
            )
        mail_cmd = proto.mail_from(
            mail_from,
            size=size if caps.size is not None or "SIZE" in caps.keywords else None,
            body8bit=body8bit and caps.eightbitmime,
            smtputf8=smtputf8,
        )
        rcpt_cmds = [proto.rcpt_to(rcpt, smtputf8=smtputf8) for rcpt in recipients]

        rcpt_replies: dict[str, Reply] = {}
        if caps.pipelining:
            # RFC 2920: the whole envelope in one write, then the replies in order.
            await self._send(mail_cmd + b"".join(rcpt_cmds), "mail")
            mail_reply = await self._read_reply("mail", self._command_timeout)
            for rcpt in recipients:
                rcpt_replies[rcpt] = await self._read_reply("rcpt", self._command_timeout)
            if not _ok(mail_reply):
                raise SmtpReplyError("mail", mail_reply)
        else:
            await self._send(mail_cmd, "mail")
            mail_reply = await self._read_reply("mail", self._command_timeout)
            if not _ok(mail_reply):
                raise SmtpReplyError("mail", mail_reply)
            for rcpt, cmd in zip(recipients, rcpt_cmds, strict=True):
                await self._send(cmd, "rcpt")
                rcpt_replies[rcpt] = await self._read_reply("rcpt", self._command_timeout)

        if not any(_ok(reply) for reply in rcpt_replies.values()):
            await self.rset()
            return TransactionResult(mail_reply, rcpt_replies, None)

        await self._send(proto.DATA, "data")
        go_ahead = await self._read_reply("data", self._command_timeout)
        if go_ahead.code != 354:
            await self.rset()
            return TransactionResult(mail_reply, rcpt_replies, go_ahead)

        await self._send_body(body)
        data_reply = await self._read_reply("message", self._data_timeout)
        self._messages_sent += 1
        return TransactionResult(mail_reply, rcpt_replies, data_reply)

    async def rset(self) -> Reply:
        await self._send(proto.RSET, "rset")
        reply = await self._read_reply("rset", self._command_timeout)
        if not _ok(reply):
            # A server that cannot reset its state is not worth reusing.
            self._fail()
        return reply

    async def noop(self) -> Reply:
        """Cheap liveness probe before reusing a pooled connection."""
        await self._send(proto.NOOP, "rset")
        return await self._read_reply("rset", self._command_timeout)

    async def quit(self) -> None:
        """Say goodbye and close; errors are ignored because the work is already done."""
        try:
            if self.is_usable:
                await self._send(proto.QUIT, "quit")
                await self._read_reply("quit", min(self._command_timeout, 5.0))
        except SmtpClientError:
            pass
        finally:
            self.close()
            await self.wait_closed()

    def close(self) -> None:
        self._broken = True
        self._writer.close()

    async def wait_closed(self, grace: float = 5.0) -> None:
        try:
            async with asyncio.timeout(grace):
                await self._writer.wait_closed()
        except (TimeoutError, OSError, ssl.SSLError):
            pass

    # -- internals ------------------------------------------------------------------------

    def _fail(self) -> None:
        self._broken = True
        self._writer.close()

    def _check_usable(self, stage: Stage) -> None:
        if not self.is_usable:
            raise SmtpConnectionError(stage, "connection is closed or unusable")

    async def _send(self, data: bytes, stage: Stage) -> None:
        self._check_usable(stage)
        try:
            self._writer.write(data)
            async with asyncio.timeout(self._command_timeout):
                await self._writer.drain()
        except TimeoutError:
            self._fail()
            raise SmtpTimeout(stage, self._command_timeout) from None
        except (OSError, ConnectionError) as exc:
            self._fail()
            raise SmtpConnectionError(stage, f"connection lost: {exc}") from exc

    async def _send_body(self, body: AsyncIterable[bytes]) -> None:
        stuffer = DotStuffer()
        try:
            async for chunk in body:
                self._writer.write(stuffer.stuff(chunk))
                async with asyncio.timeout(self._data_timeout):
                    await self._writer.drain()
            self._writer.write(stuffer.finish())
            async with asyncio.timeout(self._data_timeout):
                await self._writer.drain()
        except TimeoutError:
            self._fail()
            raise SmtpTimeout("message", self._data_timeout) from None
        except (OSError, ConnectionError) as exc:
            self._fail()
            raise SmtpConnectionError("message", f"connection lost while sending data: {exc}") from exc
        except BaseException:
            # The body source failed mid-DATA: there is no way back to a clean state.
            self._fail()
            raise

    async def _read_reply(self, stage: Stage, limit: float) -> Reply:
        try:
            async with asyncio.timeout(limit):
                while (reply := self._parser.next_reply()) is None:
                    data = await self._reader.read(_READ_SIZE)
                    if not data:
                        self._fail()
                        raise SmtpConnectionError(stage, "connection closed by the server")
                    self._parser.feed(data)
        except TimeoutError:
            self._fail()
            raise SmtpTimeout(stage, limit) from None
        except SmtpClientError as exc:
            self._fail()
            if exc.stage == "protocol":
                exc.stage = stage
            raise
        except (OSError, ConnectionError) as exc:
            self._fail()
            raise SmtpConnectionError(stage, f"connection lost: {exc}") from exc
        self._last_used = time.monotonic()
        if reply.code == 421:
            # RFC 5321 3.8: the server is closing the channel.
            self._fail()
            raise SmtpReplyError(stage, reply)
        return reply


def _ok(reply: Reply) -> bool:
    return 200 <= reply.code < 300


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
