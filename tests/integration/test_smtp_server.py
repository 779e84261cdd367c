"""The SMTP interface, in-process, over real sockets, with the real SQLite store."""

from __future__ import annotations

import asyncio
import smtplib
import sqlite3
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.certs import make_cert
from zonerelay.config import load_config
from zonerelay.ingest.pipeline import IngestPipeline
from zonerelay.smtp.server import SmtpInterface
from zonerelay.store.base import DeliveryStatus
from zonerelay.store.sqlite import SqliteStore

Start = Callable[..., Awaitable[tuple[SmtpInterface, SqliteStore]]]


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[Start]:
    running: list[tuple[SmtpInterface, SqliteStore]] = []

    async def start(**iface: Any) -> tuple[SmtpInterface, SqliteStore]:
        overrides = {
            "hostname": "relay.test",
            "queue": {"data_dir": str(tmp_path / "data")},
            "smtp": {"feeder": {"port": 0, **iface}},
        }
        config = load_config(overrides=overrides)
        store = SqliteStore(Path(config.queue.data_dir) / "queue.db", busy_timeout=0.5)
        await store.open()
        server = SmtpInterface("feeder", config.smtp["feeder"], IngestPipeline(store, config), "relay.test")
        await server.start()
        running.append((server, store))
        return server, store

    yield start
    for server, store in running:
        await server.stop(grace=1)
        await store.close()


def smtp_session(port: int, action: Callable[[smtplib.SMTP], Any]) -> Any:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return action(client)


async def in_thread(port: int, action: Callable[[smtplib.SMTP], Any]) -> Any:
    return await asyncio.to_thread(smtp_session, port, action)


MESSAGE = (
    b"From: Sender <sender@example.com>\r\n"
    b"To: a@example.net, b@example.org\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Hello world.\r\n"
    b".leading dot survives\r\n"
)


async def body_of(store: SqliteStore, queue_id: str) -> bytes:
    return b"".join([chunk async for chunk in store.read_body(queue_id)])


async def test_accepted_message_is_stored_with_one_delivery_per_recipient(start_server: Start) -> None:
    server, store = await start_server()

    def send(c: smtplib.SMTP) -> tuple[int, bytes]:
        c.ehlo("client.test")
        c.mail("sender@example.com")
        c.rcpt("a@example.net")
        c.rcpt("b@EXAMPLE.org")
        return c.data(MESSAGE)

    code, text = await in_thread(server.port, send)
    assert code == 250
    queue_id = text.decode().rsplit(" ", 1)[-1]
    assert len(queue_id) == 18 and int(queue_id, 16) >= 0

    message = await store.get_message(queue_id)
    assert message is not None
    assert message.sender == "sender@example.com"
    assert message.headers.startswith(b"From: Sender <sender@example.com>\r\n")
    assert b"\r\nMessage-ID: <" in message.headers or message.headers.startswith(b"Message-ID")
    assert b"Date: " in message.headers
    assert message.headers.endswith(b"\r\n\r\n")
    assert await body_of(store, queue_id) == b"Hello world.\r\n.leading dot survives\r\n"
    meta = message.meta
    assert meta["transhost"] == "client.test" and meta["origin"] == "127.0.0.1"
    assert meta["interface"] == "feeder" and meta["bodySize"] == len(
        b"Hello world.\r\n.leading dot survives\r\n"
    )
    assert meta["dkim"]["hashAlgo"] == "sha256" and meta["dkim"]["bodyHash"]
    assert meta["parsedEnvelope"]["from"] == "sender@example.com"

    deliveries = await store.get_deliveries(queue_id)
    assert [(d.seq, d.recipient, d.domain, d.zone, d.status) for d in deliveries] == [
        ("001", "a@example.net", "example.net", "default", DeliveryStatus.QUEUED),
        ("002", "b@EXAMPLE.org", "example.org", "default", DeliveryStatus.QUEUED),
    ]


async def test_ehlo_advertises_the_extensions(start_server: Start) -> None:
    server, _ = await start_server(max_size="10MB")

    def ehlo(c: smtplib.SMTP) -> dict[str, str]:
        c.ehlo("client.test")
        return dict(c.esmtp_features)

    features = await in_thread(server.port, ehlo)
    for keyword in ("pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes"):
        assert keyword in features
    assert features["size"] == "10000000"
    assert "starttls" not in features and "auth" not in features


async def test_pipelined_transactions_in_one_session(start_server: Start) -> None:
    server, store = await start_server()
    script = b"EHLO client.test\r\n"
    for n in range(3):
        script += b"MAIL FROM:<s@example.com>\r\nRCPT TO:<r%d@example.net>\r\nDATA\r\n" % n
        script += b"Subject: %d\r\n\r\nbody %d\r\n.\r\n" % (n, n)
    script += b"QUIT\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(script)
    await writer.drain()
    replies = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    assert replies.count("queued as") == 3
    assert replies.rstrip().splitlines()[-1].startswith("221")
    assert (await store.stats()).messages == 3


async def test_oversize_messages_are_refused_and_not_stored(start_server: Start) -> None:
    server, store = await start_server(max_size=1000)

    def declared(c: smtplib.SMTP) -> tuple[int, bytes]:
        c.ehlo("client.test")
        return c.mail("s@example.com", ["SIZE=5000"])

    code, text = await in_thread(server.port, declared)
    assert code == 552 and text.startswith(b"5.3.4")

    def actual(c: smtplib.SMTP) -> tuple[int, bytes]:
        c.ehlo("client.test")
        c.mail("s@example.com")
        c.rcpt("r@example.net")
        code, text = c.data(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 100 + b"y" * 2000 + b"\r\n")
        assert code == 552, text
        # the session goes on after the refusal
        return c.noop()

    assert (await in_thread(server.port, actual))[0] == 250
    assert (await store.stats()).messages == 0


@pytest.mark.parametrize("payload", [b"line\nsmuggled\r\n", b"line\rmore\r\n"])
async def test_bare_line_endings_are_refused_by_default(start_server: Start, payload: bytes) -> None:
    server, store = await start_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"EHLO c\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n")
    writer.write(b"Subject: x\r\n\r\n" + payload + b".\r\nQUIT\r\n")
    await writer.drain()
    replies = (await asyncio.wait_for(reader.read(), 10)).decode().splitlines()
    writer.close()
    data_reply = [line for line in replies if line[:1] in "45" or "queued" in line]
    assert data_reply and data_reply[0].startswith("5"), replies
    assert (await store.stats()).messages == 0


async def test_smuggled_end_of_data_does_not_end_the_message(start_server: Start) -> None:
    server, store = await start_server(line_endings="normalize")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"EHLO c\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n")
    writer.write(b"Subject: x\r\n\r\nfirst\n.\nMAIL FROM:<evil@example.com>\r\nsecond\r\n.\r\nQUIT\r\n")
    await writer.drain()
    replies = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    assert replies.count("queued as") == 1
    [delivery] = await store.list_deliveries()
    body = await body_of(store, delivery.id)
    assert body == b"first\r\n.\r\nMAIL FROM:<evil@example.com>\r\nsecond\r\n"


async def test_client_vanishing_mid_data_leaves_nothing(start_server: Start) -> None:
    server, store = await start_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"EHLO c\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.net>\r\nDATA\r\n")
    writer.write(b"Subject: x\r\n\r\n" + b"y" * 1_000_000)
    await writer.drain()
    await reader.readuntil(b"354 ")
    writer.transport.abort()
    await asyncio.sleep(0.3)
    stats = await store.stats()
    assert stats.messages == 0 and stats.queued == 0
    gc = await store.collect_garbage(now=10**10, retention=0, orphan_age=0)
    assert gc.orphan_bodies == 0  # the aborted body was already removed


async def test_too_many_recipients(start_server: Start) -> None:
    server, _ = await start_server(max_recipients=2)

    def send(c: smtplib.SMTP) -> list[int]:
        c.ehlo("c")
        c.mail("s@example.com")
        return [c.rcpt(f"r{n}@example.net")[0] for n in range(3)]

    assert await in_thread(server.port, send) == [250, 250, 452]


async def test_network_not_allowed(start_server: Start) -> None:
    server, _ = await start_server(allowed_networks=["10.0.0.0/8"])
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    greeting = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert greeting.startswith(b"554 5.7.1")


async def test_idle_client_is_disconnected(start_server: Start) -> None:
    server, _ = await start_server(idle_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.splitlines()[-1].startswith(b"421 4.4.2")


async def test_auth_over_starttls_is_required_before_relaying(start_server: Start, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "relay.test")
    server, store = await start_server(
        auth=True, users={"alice": "s3cret"}, tls_cert=str(cert), tls_key=str(key)
    )
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def unauthenticated(c: smtplib.SMTP) -> tuple[set[str], tuple[int, bytes]]:
        c.ehlo("c")
        features = set(c.esmtp_features)
        return features, c.mail("s@example.com")

    features, reply = await in_thread(server.port, unauthenticated)
    assert "starttls" in features and "auth" not in features
    assert reply[0] == 530

    def wrong_password(c: smtplib.SMTP) -> int:
        c.starttls(context=context)
        c.ehlo("c")
        try:
            c.login("alice", "wrong")
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code
        return 0

    assert await in_thread(server.port, wrong_password) == 535

    def good(c: smtplib.SMTP) -> dict[str, Any]:
        c.starttls(context=context)
        c.ehlo("c")
        c.login("alice", "s3cret")
        return c.sendmail("s@example.com", ["r@example.net"], b"Subject: hi\r\n\r\nhi\r\n")

    assert await in_thread(server.port, good) == {}
    [delivery] = await store.list_deliveries()
    message = await store.get_message(delivery.id)
    assert message is not None
    assert message.meta["user"] == "alice" and message.meta["transtype"] == "ESMTPSA"
    assert message.meta["tls"]["version"].startswith("TLS")


async def test_swaks_submits_a_message(start_server: Start) -> None:
    server, store = await start_server()
    result = await asyncio.to_thread(
        subprocess.run,
        [
            "swaks",
            "--server",
            f"127.0.0.1:{server.port}",
            "--from",
            "s@example.com",
            "--to",
            "r@example.net",
            "--header",
            "Subject: swaks test",
            "--body",
            "hello from swaks",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "queued as" in result.stdout
    assert (await store.stats()).queued == 1


async def test_eight_bit_body_needs_8bitmime(start_server: Start) -> None:
    server, store = await start_server()
    body = "Subject: caf\u00e9\r\n\r\nna\u00efve\r\n".encode()

    def undeclared(c: smtplib.SMTP) -> tuple[int, bytes]:
        c.ehlo("c")
        c.mail("s@example.com")
        c.rcpt("r@example.net")
        return c.data(body)

    assert (await in_thread(server.port, undeclared))[0] == 554

    def declared(c: smtplib.SMTP) -> dict[str, Any]:
        c.ehlo("c")
        return c.sendmail("s@example.com", ["r@example.net"], body, mail_options=["BODY=8BITMIME"])

    assert await in_thread(server.port, declared) == {}
    assert (await store.stats()).messages == 1


async def test_utf8_addresses_with_smtputf8(start_server: Start) -> None:
    server, store = await start_server()

    def send(c: smtplib.SMTP) -> dict[str, Any]:
        c.ehlo("c")
        return c.sendmail(
            "андрис@уайлддак.орг",
            ["ä@bücher.example"],
            "Subject: ü\r\n\r\nhi\r\n".encode(),
            mail_options=["SMTPUTF8", "BODY=8BITMIME"],
        )

    assert await in_thread(server.port, send) == {}
    [delivery] = await store.list_deliveries()
    assert delivery.recipient == "ä@bücher.example"
    assert delivery.domain == "xn--bcher-kva.example"


async def test_locked_store_answers_451_and_the_client_can_retry(start_server: Start, tmp_path: Path) -> None:
    server, store = await start_server()
    blocker = sqlite3.connect(tmp_path / "data" / "queue.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")

    def send(c: smtplib.SMTP) -> tuple[int, bytes]:
        c.ehlo("c")
        c.mail("s@example.com")
        c.rcpt("r@example.net")
        return c.data(b"Subject: locked\r\n\r\nbody\r\n")

    try:
        code, text = await in_thread(server.port, send)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert code == 451 and text.startswith(b"4.3.0")
    assert (await in_thread(server.port, send))[0] == 250
    assert (await store.stats()).messages == 1


async def test_bcc_header_is_not_passed_on(start_server: Start) -> None:
    server, store = await start_server()
    message = (
        b"From: s@example.com\r\nTo: a@example.net\r\nBcc: hidden@example.org\r\nSubject: x\r\n\r\nhi\r\n"
    )

    def send(c: smtplib.SMTP) -> dict[str, Any]:
        return c.sendmail("s@example.com", ["a@example.net", "hidden@example.org"], message)

    assert await in_thread(server.port, send) == {}
    [first, _] = await store.list_deliveries()
    stored = await store.get_message(first.id)
    assert stored is not None
    assert b"Bcc" not in stored.headers and b"hidden" not in stored.headers
    assert stored.meta["parsedEnvelope"]["bcc"] == ["hidden@example.org"]
