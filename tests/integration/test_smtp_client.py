"""The outbound SMTP client against real receivers (aiosmtpd recorder, Postfix smtp-sink)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.fixtures.ports import free_port
from tests.fixtures.receivers import RecordingReceiver, SmtpSink
from zonerelay.smtp.client import SmtpClient, insecure_client_context
from zonerelay.smtp.errors import (
    LocalRefusal,
    SmtpConnectionError,
    SmtpReplyError,
    SmtpTimeout,
    TlsHandshakeError,
)

Receivers = Callable[..., RecordingReceiver]
Sinks = Callable[..., SmtpSink]


async def connect(host: str, port: int, **overrides: float) -> SmtpClient:
    options = {"connect_timeout": 5.0, "command_timeout": 5.0, "data_timeout": 10.0, **overrides}
    return await SmtpClient.connect(host, port, local_address="127.0.0.1", helo_name="relay.test", **options)


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


MESSAGE = b"From: a@sender.test\r\nTo: b@rcpt.test\r\nSubject: hi\r\n\r\nHello.\r\n"


async def test_plain_delivery(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.1")
    client = await connect(receiver.host, receiver.port)
    caps = await client.ehlo()
    assert caps.pipelining and caps.smtputf8 and caps.size
    result = await client.send_message("a@sender.test", ["b@rcpt.test"], chunks(MESSAGE), size=len(MESSAGE))
    assert result.data_reply is not None and result.data_reply.code == 250
    assert result.delivered == ["b@rcpt.test"]
    assert client.messages_sent == 1 and client.tls_version is None
    assert client.peer == (receiver.host, receiver.port) and client.local_address == "127.0.0.1"
    await client.quit()
    [message] = await receiver.wait_messages(1)
    assert message.data == MESSAGE
    assert message.mail_from == "a@sender.test" and message.rcpt_tos == ("b@rcpt.test",)
    assert f"SIZE={len(MESSAGE)}" in message.mail_options
    assert message.helo == "relay.test" and not message.tls


async def test_starttls_then_delivery(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.2", tls=True)
    client = await connect(receiver.host, receiver.port)
    assert (await client.ehlo()).starttls
    await client.starttls(insecure_client_context())
    assert client.tls_version in ("TLSv1.2", "TLSv1.3") and client.tls_cipher
    assert not client.capabilities.starttls  # fresh EHLO after the handshake
    result = await client.send_message("a@sender.test", ["b@rcpt.test"], chunks(MESSAGE), size=None)
    assert result.delivered == ["b@rcpt.test"]
    await client.quit()
    [message] = await receiver.wait_messages(1)
    assert message.tls and message.data == MESSAGE and message.peer[0] == "127.0.0.1"


async def test_large_body_with_dot_lines_arrives_byte_identical(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.3")
    lines = [b"Subject: big\r\n", b"\r\n"]
    for i in range(60_000):
        lines.append(b"." * (i % 4) + b"line %06d of the body with some padding text to make it long\r\n" % i)
    body = b"".join(lines)
    assert len(body) > 3_000_000
    client = await connect(receiver.host, receiver.port)
    await client.ehlo()
    result = await client.send_message(
        "a@sender.test", ["b@rcpt.test"], chunks(body, 100_003), size=len(body), body8bit=True
    )
    assert result.delivered == ["b@rcpt.test"]
    await client.quit()
    [message] = await receiver.wait_messages(1)
    assert message.data == body
    assert "BODY=8BITMIME" in message.mail_options


async def test_per_recipient_results(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.4")
    receiver.respond("rcpt", "450 4.2.1 mailbox busy", rcpt="busy@rcpt.test")
    receiver.respond("rcpt", "550 5.1.1 no such user", rcpt="gone@rcpt.test")
    client = await connect(receiver.host, receiver.port)
    await client.ehlo()
    recipients = ["ok1@rcpt.test", "busy@rcpt.test", "gone@rcpt.test", "ok2@rcpt.test"]
    result = await client.send_message("a@sender.test", recipients, chunks(MESSAGE), size=None)
    codes = {rcpt: (reply.code, reply.status) for rcpt, reply in result.rcpt_replies.items()}
    assert codes == {
        "ok1@rcpt.test": (250, "2.1.5"),
        "busy@rcpt.test": (450, "4.2.1"),
        "gone@rcpt.test": (550, "5.1.1"),
        "ok2@rcpt.test": (250, "2.1.5"),
    }
    assert result.delivered == ["ok1@rcpt.test", "ok2@rcpt.test"]
    [message] = await receiver.wait_messages(1)
    assert message.rcpt_tos == ("ok1@rcpt.test", "ok2@rcpt.test")

    # No recipient accepted: no DATA, RSET, and the connection is still good for the next one.
    receiver.respond("rcpt", "550 5.1.1 no such user", rcpt="gone2@rcpt.test")
    result = await client.send_message("a@sender.test", ["gone2@rcpt.test"], chunks(MESSAGE), size=None)
    assert result.data_reply is None and result.delivered == []
    assert client.is_usable
    result = await client.send_message("a@sender.test", ["ok3@rcpt.test"], chunks(MESSAGE), size=None)
    assert result.delivered == ["ok3@rcpt.test"]
    assert client.messages_sent == 2
    await client.quit()


async def test_mail_from_rejected(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.5")
    receiver.respond("mail", "553 5.7.1 sender not allowed", times=1)
    client = await connect(receiver.host, receiver.port)
    await client.ehlo()
    with pytest.raises(SmtpReplyError) as info:
        await client.send_message("bad@sender.test", ["b@rcpt.test"], chunks(MESSAGE), size=None)
    assert info.value.stage == "mail" and info.value.reply is not None
    assert info.value.reply.status == "5.7.1" and not info.value.transient
    # The pipelined RCPT replies were consumed: the connection is in sync.
    result = await client.send_message("a@sender.test", ["b@rcpt.test"], chunks(MESSAGE), size=None)
    assert result.delivered == ["b@rcpt.test"]
    await client.quit()


async def test_size_refused_locally(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.6", size_limit=1000)
    client = await connect(receiver.host, receiver.port)
    assert (await client.ehlo()).size == 1000
    with pytest.raises(LocalRefusal) as info:
        await client.send_message("a@sender.test", ["b@rcpt.test"], chunks(b"x" * 5000), size=5000)
    assert info.value.reply is not None and info.value.reply.status == "5.3.4"
    assert not info.value.transient and client.is_usable
    await client.quit()
    assert receiver.messages == []


async def test_421_after_data_makes_connection_unusable(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.7")
    receiver.respond("data", "421 4.3.2 shutting down")
    client = await connect(receiver.host, receiver.port)
    await client.ehlo()
    with pytest.raises(SmtpReplyError) as info:
        await client.send_message("a@sender.test", ["b@rcpt.test"], chunks(MESSAGE), size=None)
    assert info.value.reply is not None and info.value.reply.code == 421
    assert info.value.stage == "message" and info.value.transient
    assert not client.is_usable
    with pytest.raises(SmtpConnectionError):
        await client.send_message("a@sender.test", ["b@rcpt.test"], chunks(MESSAGE), size=None)
    await client.quit()


async def test_421_greeting(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.8")
    receiver.respond("connect", "421 4.7.0 too busy")
    with pytest.raises(SmtpReplyError) as info:
        await connect(receiver.host, receiver.port)
    assert info.value.stage == "connect" and info.value.transient


async def test_non_220_greeting(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.8")
    receiver.respond("connect", "554 5.7.1 go away")
    with pytest.raises(SmtpReplyError) as info:
        await connect(receiver.host, receiver.port)
    assert info.value.stage == "connect" and not info.value.transient


async def test_ehlo_refused_falls_back_to_helo(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.9")
    receiver.respond("ehlo", "502 5.5.1 EHLO not implemented")
    client = await connect(receiver.host, receiver.port)
    caps = await client.ehlo()
    assert not caps.esmtp and not caps.pipelining
    result = await client.send_message("a@sender.test", ["b@rcpt.test"], chunks(MESSAGE), size=len(MESSAGE))
    assert result.delivered == ["b@rcpt.test"]
    await client.quit()
    [message] = await receiver.wait_messages(1)
    assert message.mail_options == ()  # no SIZE= to a server that did not announce it


async def test_timeout_on_hanging_greeting(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.10")
    receiver.respond("connect", hang=5)
    started = time.monotonic()
    with pytest.raises(SmtpTimeout) as info:
        await connect(receiver.host, receiver.port, connect_timeout=0.3, command_timeout=0.3)
    assert info.value.stage == "connect" and info.value.transient
    assert time.monotonic() - started < 2


async def test_timeout_waiting_for_rcpt_reply(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.10")
    receiver.respond("rcpt", hang=5)
    client = await connect(receiver.host, receiver.port, command_timeout=0.5)
    await client.ehlo()
    with pytest.raises(SmtpTimeout) as info:
        await client.send_message("a@sender.test", ["b@rcpt.test"], chunks(MESSAGE), size=None)
    assert info.value.stage == "rcpt"
    assert not client.is_usable
    client.close()
    await client.wait_closed()


async def test_timeout_waiting_for_final_reply(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.10")
    receiver.respond("data", hang=5)
    client = await connect(receiver.host, receiver.port, data_timeout=0.5)
    await client.ehlo()
    with pytest.raises(SmtpTimeout) as info:
        await client.send_message("a@sender.test", ["b@rcpt.test"], chunks(MESSAGE), size=None)
    assert info.value.stage == "message"
    await client.quit()


async def test_tls_handshake_failure(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.11", broken_tls=True)
    client = await connect(receiver.host, receiver.port)
    assert (await client.ehlo()).starttls
    with pytest.raises(TlsHandshakeError) as info:
        await client.starttls(insecure_client_context())
    assert info.value.stage == "starttls" and info.value.transient
    assert not client.is_usable
    await client.quit()


async def test_connection_refused() -> None:
    port = free_port("127.0.0.12")
    with pytest.raises(SmtpConnectionError) as info:
        await connect("127.0.0.12", port)
    assert info.value.stage == "connect" and info.value.transient


async def test_pipelining_sends_envelope_in_one_go() -> None:
    """A scripted server that answers MAIL only after it has all RCPTs: stalls a lock-step client."""
    received = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted\r\n")
        await reader.readline()
        writer.write(b"250-scripted\r\n250 PIPELINING\r\n")
        while received.count(b"\r\n") < 3:
            received.extend(await reader.read(4096))
        writer.write(b"250 ok\r\n550 no\r\n550 no\r\n")
        await reader.readline()  # RSET
        writer.write(b"250 ok\r\n")
        await reader.readline()  # QUIT
        writer.write(b"221 bye\r\n")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.13", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        client = await connect("127.0.0.13", port, command_timeout=2)
        await client.ehlo()
        result = await client.send_message("a@s.test", ["x@r.test", "y@r.test"], chunks(MESSAGE), size=None)
        assert result.data_reply is None
        assert [r.code for r in result.rcpt_replies.values()] == [550, 550]
        assert bytes(received) == b"MAIL FROM:<a@s.test>\r\nRCPT TO:<x@r.test>\r\nRCPT TO:<y@r.test>\r\n"
        await client.quit()


async def test_against_smtp_sink(smtp_sink: Sinks) -> None:
    sink = smtp_sink("127.0.0.14")
    client = await connect(sink.host, sink.port)
    assert (await client.ehlo()).pipelining
    body = b"Subject: sink\r\n\r\n.leading dot\r\nend\r\n"
    for _ in range(3):
        result = await client.send_message("a@s.test", ["x@r.test", "y@r.test"], chunks(body), size=len(body))
        assert result.delivered == ["x@r.test", "y@r.test"]
    await client.quit()
    await sink.wait_count(3)
    message = sink.messages()[0]
    assert message.rcpt_args == ("<x@r.test>", "<y@r.test>")
    assert message.body.startswith(b"Subject: sink\n\n.leading dot\nend\n")


async def test_smtp_sink_soft_rejects_rcpt(smtp_sink: Sinks) -> None:
    sink = smtp_sink("127.0.0.14", soft_reject=("RCPT",))
    client = await connect(sink.host, sink.port)
    await client.ehlo()
    result = await client.send_message("a@s.test", ["x@r.test"], chunks(MESSAGE), size=None)
    assert result.data_reply is None
    assert result.rcpt_replies["x@r.test"].code == 450
    await client.quit()
    assert sink.count == 0


async def test_receiver_tracks_concurrency(recording_receiver: Receivers) -> None:
    receiver = recording_receiver("127.0.0.15")
    clients = await asyncio.gather(*(connect(receiver.host, receiver.port) for _ in range(3)))
    assert receiver.max_concurrent == 3 and receiver.current_connections == 3
    for client in clients:
        await client.quit()
    await receiver.wait_idle()
    assert receiver.max_concurrent == 3 and receiver.connections_total == 3
