"""The whole relay, as a user runs it, against a real DNS server and real SMTP receivers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests.fixtures.dns import DnsServer
from tests.fixtures.receivers import RecordingReceiver
from tests.fixtures.relay import Relay, route_to

RelayFactory = Callable[..., Relay]
ReceiverFactory = Callable[..., RecordingReceiver]

BODY = b"Hello,\r\n.line with a leading dot\r\n\r\ntrailing\r\n"


def message(subject: str = "test", body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (
        b"From: Sender <sender@example.com>\r\nTo: rcpt@example.test\r\nSubject: "
        + subject.encode()
        + b"\r\nMessage-ID: <m1@example.com>\r\n"
        + extra
        + b"\r\n"
        + body
    )


async def test_message_is_delivered_byte_for_byte_with_a_received_header(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.2")
    r = relay(route_to(dns_server, receiver))
    queue_id = r.send("sender@example.com", ["rcpt@example.test", "other@example.test"], message())
    [got] = await receiver.wait_messages(1, within=20)
    assert got.mail_from == "sender@example.com"
    assert sorted(got.rcpt_tos) == ["other@example.test", "rcpt@example.test"]
    assert got.data.startswith(
        b"Received: from client.test ([127.0.0.1])\r\n\tby relay.test (zonerelay) with ESMTP"
    )
    headers, _, body = message().partition(b"\r\n\r\n")
    assert headers + b"\r\nDate: " in got.data  # the missing Date was added, the rest is unchanged
    assert got.data.endswith(b"\r\n\r\n" + body)
    data = r.wait_status(queue_id, {"delivered"})
    assert [m["status"] for m in data["messages"]] == ["delivered", "delivered"]
    events = data["events"]
    assert {e["status"] for e in events} == {"delivered"}
    assert events[0]["mx"] == "mx.example.test" and events[0]["ip"] == "127.0.0.2"
    assert events[0]["response"].startswith("250")


async def test_starttls_is_used_when_the_receiver_offers_it(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.3", tls=True)
    r = relay(route_to(dns_server, receiver))
    queue_id = r.send("sender@example.com", ["rcpt@example.test"], message())
    [got] = await receiver.wait_messages(1, within=20)
    assert got.tls
    event = r.wait_status(queue_id, {"delivered"})["events"][0]
    assert event["tls"]["version"].startswith("TLS")


async def test_broken_tls_falls_back_to_plain_text(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.3", broken_tls=True)
    r = relay(route_to(dns_server, receiver))
    queue_id = r.send("sender@example.com", ["rcpt@example.test"], message())
    [got] = await receiver.wait_messages(1, within=20)
    assert not got.tls
    r.wait_status(queue_id, {"delivered"})


async def test_soft_failures_are_deferred_and_hard_failures_bounced(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.4")
    receiver.respond("rcpt", "450 4.2.1 Mailbox busy, try later", rcpt="busy@example.test")
    receiver.respond("rcpt", "550 5.1.1 No such user", rcpt="nobody@example.test")
    r = relay(route_to(dns_server, receiver))
    before = time.time()
    queue_id = r.send(
        "sender@example.com", ["ok@example.test", "busy@example.test", "nobody@example.test"], message()
    )
    data = r.wait_status(queue_id, {"delivered", "deferred", "bounced"})
    by_rcpt = {m["recipient"]: m for m in data["messages"]}
    assert by_rcpt["ok@example.test"]["status"] == "delivered"
    busy = by_rcpt["busy@example.test"]
    assert busy["status"] == "deferred" and busy["attempts"] == 1
    assert busy["last_response"].startswith("450 4.2.1")
    next_attempt = time.mktime(time.strptime(busy["next_attempt"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before + 5 * 60 - 5 <= next_attempt <= time.time() + 5 * 60 + 5  # first step of the schedule
    assert by_rcpt["nobody@example.test"]["status"] == "bounced"
    assert by_rcpt["nobody@example.test"]["last_response"].startswith("550 5.1.1")
    [got] = receiver.messages
    assert got.rcpt_tos == ("ok@example.test",)
    listing = r.cli("queue", "list", "--status", "deferred")
    assert "busy@example.test" in listing.stdout and "ok@example.test" not in listing.stdout


async def test_dns_failures(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.5")
    dns_server.null_mx("nullmx.test")
    settings = route_to(dns_server, receiver)
    r = relay(settings)
    queue_id = r.send("sender@example.com", ["a@nullmx.test", "b@nxdomain.test"], message())
    data = r.wait_status(queue_id, {"bounced"})
    by_rcpt = {m["recipient"]: m["last_response"] for m in data["messages"]}
    assert "5.1.10" in by_rcpt["a@nullmx.test"]
    assert "5.1.2" in by_rcpt["b@nxdomain.test"]


async def test_unreachable_mx_is_deferred_and_next_mx_is_tried(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    backup = recording_receiver("127.0.0.7")
    dns_server.add_mx("example.test", "dead.example.test", 5)
    dns_server.add_a("dead.example.test", "127.0.0.6")  # nothing listens there
    settings = route_to(dns_server, backup)
    r = relay(settings)
    queue_id = r.send("sender@example.com", ["rcpt@example.test"], message())
    await backup.wait_messages(1, within=20)
    assert r.wait_status(queue_id, {"delivered"})["events"][0]["ip"] == "127.0.0.7"

    dns_server.clear().add_mx("down.test", "dead.down.test", 10).add_a(
        "dead.down.test", "127.0.0.6"
    ).restart()
    other = r.send("sender@example.com", ["x@down.test"], message())
    data = r.wait_status(other, {"deferred"})
    assert data["messages"][0]["last_response"]


async def test_future_date_header_delays_delivery(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.8")
    r = relay(route_to(dns_server, receiver))
    later = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(time.time() + 3600))
    queue_id = r.send(
        "sender@example.com", ["rcpt@example.test"], message(extra=f"Date: {later}\r\n".encode())
    )
    await asyncio.sleep(1.5)
    data = r.show(queue_id)
    assert data["messages"][0]["status"] == "queued"
    assert data["meta"]["deliverAfter"] > time.time() * 1000 + 3500 * 1000
    assert receiver.messages == []


async def test_utf8_recipient_needs_smtputf8_at_the_receiver(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.9")
    r = relay(route_to(dns_server, receiver))
    queue_id = r.send(
        "sender@example.com",
        ["андрис@example.test"],
        message(subject="тест"),
        mail_options=["SMTPUTF8", "BODY=8BITMIME"],
    )
    [got] = await receiver.wait_messages(1, within=20)
    assert got.rcpt_tos == ("андрис@example.test",)
    assert "SMTPUTF8" in got.mail_options
    r.wait_status(queue_id, {"delivered"})
