"""Receivers that misbehave: every fault ends in the right defer or bounce, and nothing is lost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.dns import DnsServer
from tests.fixtures.receivers import RecordingReceiver
from tests.fixtures.relay import Relay, route_to

RelayFactory = Callable[..., Relay]
ReceiverFactory = Callable[..., RecordingReceiver]

MESSAGE = b"From: s@example.com\r\nTo: r@example.test\r\nSubject: faults\r\n\r\n" + b"line\r\n" * 500


def start(relay: RelayFactory, dns: DnsServer, receiver: RecordingReceiver, **delivery: Any) -> Relay:
    return relay({**route_to(dns, receiver), "delivery": delivery})


@pytest.mark.parametrize(
    ("stage", "reply", "disconnect"),
    [
        ("data", "421 4.3.2 Shutting down", True),  # accepts the body, then 421
        ("mail", "451 4.7.1 Try again later", False),
        ("data", None, True),  # drops the connection after the body, before any reply
        ("connect", "421 4.3.2 Too busy", True),
    ],
)
def test_temporary_receiver_failures_defer(
    relay: RelayFactory,
    dns_server: DnsServer,
    recording_receiver: ReceiverFactory,
    stage: str,
    reply: str | None,
    disconnect: bool,
) -> None:
    receiver = recording_receiver("127.0.0.20")
    receiver.respond(stage, reply, disconnect=disconnect)  # type: ignore[arg-type]
    r = start(relay, dns_server, receiver)
    queue_id = r.send("s@example.com", ["r@example.test"], MESSAGE)
    [delivery] = r.wait_status(queue_id, {"deferred"})["messages"]
    assert delivery["attempts"] == 1
    if reply:
        assert delivery["last_response"].startswith(reply.split(" ")[0])


def test_receiver_that_hangs_times_out_and_defers(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.21")
    receiver.respond("rcpt", hang=30)
    r = start(relay, dns_server, receiver, command_timeout=1)
    queue_id = r.send("s@example.com", ["r@example.test"], MESSAGE)
    [delivery] = r.wait_status(queue_id, {"deferred"})["messages"]
    assert "timed out" in delivery["last_response"].lower() or "timeout" in delivery["last_response"].lower()


def test_message_larger_than_advertised_size_bounces(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.22", size_limit=1000)
    r = start(relay, dns_server, receiver)
    queue_id = r.send("s@example.com", ["r@example.test"], MESSAGE)
    [delivery] = r.wait_status(queue_id, {"bounced"})["messages"]
    assert "5.3.4" in delivery["last_response"]
    assert receiver.messages == []


def test_receiver_without_smtputf8_bounces_utf8_recipient(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.23", smtputf8=False)
    r = start(relay, dns_server, receiver)
    queue_id = r.send("s@example.com", ["ünïcode@example.test"], MESSAGE, mail_options=["SMTPUTF8"])
    [delivery] = r.wait_status(queue_id, {"bounced"})["messages"]
    assert "5.6.7" in delivery["last_response"]
