"""Telling the sender: DSNs delivered to the sender's MX, and durable webhooks across kill -9."""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import email.utils
import hashlib
import hmac
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.fixtures.dns import DnsServer
from tests.fixtures.receivers import RecordingReceiver
from tests.fixtures.relay import Relay
from tests.fixtures.webhooks import WebhookReceiver

RelayFactory = Callable[..., Relay]
ReceiverFactory = Callable[..., RecordingReceiver]

MESSAGE = (
    b"From: Sender <sender@example.com>\r\nTo: rcpt@example.test\r\nSubject: Quarterly report\r\n"
    b"Message-ID: <report-1@example.com>\r\n\r\nHello\r\n"
)


async def test_bounced_recipients_share_one_dsn_delivered_to_the_sender(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    destination = recording_receiver("127.0.0.51")
    senders_mx = recording_receiver("127.0.0.52", port=destination.port)  # the zone's one port
    for rcpt in ("nobody1@example.test", "nobody2@example.test"):
        destination.respond(
            "rcpt", f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown", rcpt=rcpt
        )
    dns_server.add_mx("example.test", "mx.example.test").add_a("mx.example.test", destination.host)
    dns_server.add_mx("example.com", "mx.example.com").add_a("mx.example.com", senders_mx.host)
    dns_server.start()
    r = relay({"dns": {"nameservers": [dns_server.address], "timeout": 2},
               "zones": {"default": {"port": destination.port}}})  # fmt: skip
    queue_id = r.send(
        "sender@example.com", ["ok@example.test", "nobody1@example.test", "nobody2@example.test"], MESSAGE
    )
    [dsn] = await senders_mx.wait_messages(1, within=20)
    assert dsn.mail_from == "<>" and dsn.rcpt_tos == ("sender@example.com",)
    msg = email.message_from_bytes(dsn.data, policy=email.policy.default)
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"
    _human, status, headers = msg.get_payload()
    per_message, *per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; relay.test"
    assert sorted(p["Final-Recipient"] for p in per_recipient) == [
        "rfc822; nobody1@example.test", "rfc822; nobody2@example.test"]  # fmt: skip
    assert {p["Status"] for p in per_recipient} == {"5.1.1"}
    assert {p["Remote-MTA"] for p in per_recipient} == {"dns; mx.example.test"}
    assert "Subject: Quarterly report" in headers.get_payload()
    assert queue_id in per_message["X-Zonerelay-Queue-ID"]

    # no DSN for a message from the null sender, and none for the DSN itself
    r.send("", ["nobody1@example.test"], MESSAGE)
    await asyncio.sleep(3)
    assert len(senders_mx.messages) == 1


def wait_until(predicate: Callable[[], bool], within: float, what: Callable[[], object]) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what())
        time.sleep(0.1)


async def test_a_message_with_hundreds_of_failed_recipients_gets_one_dsn(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    destination = recording_receiver("127.0.0.54")
    senders_mx = recording_receiver("127.0.0.55", port=destination.port)
    destination.respond("rcpt", "550 5.1.1 Recipient address rejected: User unknown")  # every one
    dns_server.add_mx("example.test", "mx.example.test").add_a("mx.example.test", destination.host)
    dns_server.add_mx("example.com", "mx.example.com").add_a("mx.example.com", senders_mx.host)
    dns_server.start()
    r = relay({"dns": {"nameservers": [dns_server.address], "timeout": 2},
               "zones": {"default": {"port": destination.port}}})  # fmt: skip
    rcpts = [f"nobody{n}@example.test" for n in range(250)]  # more than one outbox read (200)
    queue_id = r.send("sender@example.com", rcpts, MESSAGE)
    r.wait_status(queue_id, {"bounced"}, timeout=60)
    [dsn] = await senders_mx.wait_messages(1, within=30)
    await asyncio.sleep(2)  # a second DSN would have arrived by now
    assert len(senders_mx.messages) == 1
    status = email.message_from_bytes(dsn.data, policy=email.policy.default).get_payload()[1]
    _per_message, *per_recipient = status.get_payload()
    assert sorted(p["Final-Recipient"] for p in per_recipient) == sorted(f"rfc822; {a}" for a in rcpts)


async def test_webhooks_survive_failures_downtime_and_kill_9(
    relay: RelayFactory,
    dns_server: DnsServer,
    recording_receiver: ReceiverFactory,
    webhook_receiver: WebhookReceiver,
) -> None:
    receiver = recording_receiver("127.0.0.53")
    receiver.respond(
        "rcpt", "550 5.1.1 <nobody@example.test>: user does not exist", rcpt="nobody@example.test"
    )
    dns_server.add_mx("example.test", "mx.example.test").add_a("mx.example.test", receiver.host).start()
    base = f"http://127.0.0.1:{webhook_receiver.port}"
    r = relay({
        "dns": {"nameservers": [dns_server.address], "timeout": 2},
        "zones": {"default": {"port": receiver.port}},
        "bounces": {"dsn": False},
        "webhooks": {"events_url": f"{base}/events", "bounce_url": f"{base}/bounce", "secret": "s3cret"},
    })  # fmt: skip
    first = r.send("sender@example.com", ["ok@example.test", "nobody@example.test"], MESSAGE)
    r.wait_status(first, {"delivered", "bounced"})
    # the receiver goes away; more events happen; the relay is killed outright and restarted
    webhook_receiver.stop()
    second = r.send("sender@example.com", ["ok2@example.test", "nobody@example.test"], MESSAGE)
    r.wait_status(second, {"delivered", "bounced"})
    await asyncio.sleep(1)
    r.kill9()
    webhook_receiver.start()
    r.start()
    expected = {(first, "001", "delivered"), (first, "002", "bounced"),
                (second, "001", "delivered"), (second, "002", "bounced")}  # fmt: skip

    def seen() -> set[tuple[str, str, str]]:
        return {(e["id"], e["seq"], e["event"]) for p, e, _ in webhook_receiver.events() if p == "/events"}

    wait_until(lambda: expected <= seen(), 40, lambda: (seen(), r.log()[-3000:]))
    wait_until(lambda: len({e["id"] for p, e, _ in webhook_receiver.events() if p == "/bounce"}) == 2, 20,
               webhook_receiver.events)  # fmt: skip
    bounces = [e for p, e, _ in webhook_receiver.events() if p == "/bounce"]
    event = bounces[0]
    assert set(event) == {
        "event",
        "event_id",
        "id",
        "seq",
        "from",
        "recipient",
        "zone",
        "category",
        "action",
        "code",
        "status",
        "response",
        "mx",
        "local_address",
        "message_id",
        "subject",
        "time",
    }
    assert (event["event"], event["recipient"], event["category"], event["action"]) == (
        "bounced", "nobody@example.test", "recipient", "reject")  # fmt: skip
    assert (event["code"], event["status"], event["mx"]) == (550, "5.1.1", "mx.example.test")
    assert (event["from"], event["subject"], event["message_id"]) == (
        "sender@example.com", "Quarterly report", "<report-1@example.com>")  # fmt: skip
    for _path, body, sig in webhook_receiver.bodies():
        assert sig == hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    # in order per message: a message's events arrive in the order the store recorded them
    for queue_id in (first, second):
        recorded = [(e["seq"], e["status"]) for e in r.show(queue_id)["events"]]
        arrived = [(e["seq"], e["event"]) for p, e, _ in webhook_receiver.events()
                   if p == "/events" and e["id"] == queue_id]  # fmt: skip
        assert list(dict.fromkeys(arrived)) == recorded  # (a repeat after kill -9 is allowed)


def test_suppressed_recipients_are_reported_as_dropped_events(
    relay: RelayFactory,
    dns_server: DnsServer,
    recording_receiver: ReceiverFactory,
    webhook_receiver: WebhookReceiver,
) -> None:
    webhook_receiver.fail_left = 0  # retries are test_webhooks_survive_failures_downtime_and_kill_9's
    receiver = recording_receiver("127.0.0.54")
    dns_server.add_mx("example.test", "mx.example.test").add_a("mx.example.test", receiver.host).start()
    r = relay({
        "dns": {"nameservers": [dns_server.address], "timeout": 2},
        "zones": {"default": {"port": receiver.port}},
        "webhooks": {"events_url": f"http://127.0.0.1:{webhook_receiver.port}/events"},
    })  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{r.api_port}/suppressionlist",
        data=json.dumps({"address": "gone@example.test"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    queue_id = r.send("sender@example.com", ["ok@example.test", "gone@example.test"], MESSAGE)

    def events() -> dict[str, dict[str, Any]]:
        return {e["seq"]: e for p, e, _ in webhook_receiver.events() if e["id"] == queue_id}

    wait_until(lambda: {"001", "002"} <= set(events()), 30, lambda: (events(), r.log()[-3000:]))
    dropped = events()["002"]
    assert (dropped["event"], dropped["recipient"]) == ("dropped", "gone@example.test")
    assert dropped["zone"] == "default"
    assert dropped["subject"] == "Quarterly report"
    assert events()["001"]["event"] == "delivered"
    [got] = receiver.messages
    assert got.rcpt_tos == ("ok@example.test",)


def _report(
    data: bytes,
) -> tuple[email.message.EmailMessage, email.message.Message, list[email.message.Message]]:
    """(the DSN, its per-message fields, its per-recipient field groups)."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    per_message, *per_recipient = msg.get_payload()[1].get_payload()
    return msg, per_message, per_recipient


async def test_recipients_failing_seconds_apart_on_the_first_pass_share_one_dsn(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    quick = recording_receiver("127.0.0.55")
    slow = recording_receiver("127.0.0.56", port=quick.port)  # the zone's one port
    senders_mx = recording_receiver("127.0.0.57", port=quick.port)
    quick.respond("rcpt", "550 5.1.1 <nobody@a.test>: user unknown", rcpt="nobody@a.test")
    slow.respond("rcpt", "550 5.1.1 <nobody@b.test>: user unknown", rcpt="nobody@b.test", hang=6)
    for domain, receiver in (("a.test", quick), ("b.test", slow), ("example.com", senders_mx)):
        dns_server.add_mx(domain, f"mx.{domain}").add_a(f"mx.{domain}", receiver.host)
    dns_server.start()
    r = relay({"dns": {"nameservers": [dns_server.address], "timeout": 2},
               "zones": {"default": {"port": quick.port}}})  # fmt: skip
    queue_id = r.send("sender@example.com", ["ok@a.test", "nobody@a.test", "nobody@b.test"], MESSAGE)
    [dsn] = await senders_mx.wait_messages(1, within=30)
    msg, per_message, per_recipient = _report(dsn.data)
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert queue_id in per_message["X-Zonerelay-Queue-ID"]
    recipients = {p["Final-Recipient"]: p for p in per_recipient}
    assert set(recipients) == {"rfc822; nobody@a.test", "rfc822; nobody@b.test"}
    assert {p["Action"] for p in per_recipient} == {"failed"}
    first, second = (
        email.utils.parsedate_to_datetime(recipients[f"rfc822; nobody@{d}.test"]["Last-Attempt-Date"])
        for d in ("a", "b")
    )
    assert (second - first).total_seconds() >= 4  # they really did fail seconds apart
    await asyncio.sleep(3)
    assert len(senders_mx.messages) == 1  # and no second DSN for the later one


async def test_delayed_dsn_once_per_recipient_while_retries_go_on(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    destination = recording_receiver("127.0.0.58")
    senders_mx = recording_receiver("127.0.0.59", port=destination.port)
    for rcpt in ("slow1@example.test", "slow2@example.test"):
        destination.respond("rcpt", "451 4.7.1 Greylisted, please try again later", rcpt=rcpt)
    dns_server.add_mx("example.test", "mx.example.test").add_a("mx.example.test", destination.host)
    dns_server.add_mx("example.com", "mx.example.com").add_a("mx.example.com", senders_mx.host)
    dns_server.start()
    r = relay({
        "dns": {"nameservers": [dns_server.address], "timeout": 2},
        "zones": {"default": {"port": destination.port}},
        "queue": {"defer_times": [0.02], "max_queue_time": "1h"},  # a retry every 1.2 s
        "bounces": {"delay_warning": "2s"},
    })  # fmt: skip
    queue_id = r.send("sender@example.com", ["ok@example.test", "slow1@example.test", "slow2@example.test"],
                      MESSAGE)  # fmt: skip
    [dsn] = await senders_mx.wait_messages(1, within=30)
    assert dsn.mail_from == "<>" and dsn.rcpt_tos == ("sender@example.com",)
    msg, per_message, per_recipient = _report(dsn.data)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"
    assert "still being retried" in msg.get_payload()[0].get_content()
    assert queue_id in per_message["X-Zonerelay-Queue-ID"]
    assert sorted(p["Final-Recipient"] for p in per_recipient) == [
        "rfc822; slow1@example.test", "rfc822; slow2@example.test"]  # fmt: skip
    arrival = email.utils.parsedate_to_datetime(per_message["Arrival-Date"])
    for p in per_recipient:
        assert (p["Action"], p["Status"]) == ("delayed", "4.7.1")
        assert p["Diagnostic-Code"] == "smtp; 451 4.7.1 Greylisted, please try again later"
        until = email.utils.parsedate_to_datetime(p["Will-Retry-Until"])
        assert (until - arrival).total_seconds() == 3600  # queued time + max_queue_time

    # retries go on; the warning is not repeated
    def deferrals() -> int:
        return sum(e["status"] == "deferred" and e["seq"] == "002" for e in r.show(queue_id)["events"])

    warned_at = deferrals()
    wait_until(lambda: deferrals() >= warned_at + 3, 20, lambda: r.log()[-3000:])
    await asyncio.sleep(2)
    assert len(senders_mx.messages) == 1
    assert {m["status"] for m in r.show(queue_id)["messages"][1:]} == {"deferred"}
