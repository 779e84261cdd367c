"""Bounce handling as a user sees it: the whole relay against real receivers and real DNS."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tests.fixtures.dns import DnsServer
from tests.fixtures.receivers import RecordingReceiver
from tests.fixtures.relay import Relay, route_to
from zonerelay.config.model import PoolAddressConfig
from zonerelay.zones.pools import ranked, weights

RelayFactory = Callable[..., Relay]
ReceiverFactory = Callable[..., RecordingReceiver]

MESSAGE = (
    b"From: Sender <sender@example.com>\r\nTo: rcpt@example.test\r\nSubject: bounces\r\n"
    b"Message-ID: <bounce-test@example.com>\r\n\r\nHello\r\n"
)


def by_recipient(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["recipient"]: m for m in data["messages"]}


def last_event(data: dict[str, Any], seq: str) -> dict[str, Any]:
    events: list[dict[str, Any]] = [e for e in data["events"] if e["seq"] == seq]
    return events[-1]


async def test_every_rejection_is_classified_and_acted_on(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.31")
    receiver.respond(
        "rcpt", "550 5.1.1 <nobody@example.test>: user does not exist", rcpt="nobody@example.test"
    )
    receiver.respond("rcpt", "552 5.2.2 <full@example.test>: user is over quota", rcpt="full@example.test")
    receiver.respond("rcpt", "450 4.2.0 Greylisted, see http://postgrey.example/", rcpt="grey@example.test")
    receiver.respond("rcpt", "550 5.7.1 Message rejected under suspicion of SPAM", rcpt="spam@example.test")
    r = relay(route_to(dns_server, receiver))
    rcpts = ["ok@example.test", "nobody@example.test", "full@example.test", "grey@example.test",
             "spam@example.test"]  # fmt: skip
    queue_id = r.send("sender@example.com", rcpts, MESSAGE)
    data = r.wait_status(queue_id, {"delivered", "deferred", "bounced"})
    got = {
        m["recipient"]: (m["status"], last_event(data, m["seq"]).get("category")) for m in data["messages"]
    }
    assert got == {
        "ok@example.test": ("delivered", None),
        "nobody@example.test": ("bounced", "recipient"),
        "full@example.test": ("deferred", "mailbox_full"),  # a 5xx, but mailboxes get emptied
        "grey@example.test": ("deferred", "greylist"),
        "spam@example.test": ("bounced", "spam"),
    }
    event = last_event(data, by_recipient(data)["nobody@example.test"]["seq"])
    assert (event["action"], event["code"], event["enhanced_status"]) == ("reject", 550, "5.1.1")


async def test_blocklisted_source_ip_is_parked_and_the_other_pool_address_carries_the_mail(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.32")
    pool = ["127.0.0.41", "127.0.0.42"]
    first, second = (e.address for e in ranked(
        weights([PoolAddressConfig(address=a) for a in pool], "relay.test"), "example.test"))  # fmt: skip
    receiver.respond(
        "rcpt",
        f"554 5.7.1 Service unavailable; Client host [{first}] blocked using zen.spamhaus.org; "
        f"https://www.spamhaus.org/query/ip/{first}",
        peer=first,
    )
    settings = route_to(dns_server, receiver)
    settings["zones"]["default"]["pool"] = [{"address": a} for a in pool]
    r = relay(settings)
    started = time.monotonic()
    queue_id = r.send("sender@example.com", ["rcpt@example.test"], MESSAGE)
    [message] = await receiver.wait_messages(1, within=20)
    assert message.peer[0] == second
    assert time.monotonic() - started < 10  # retried at once, not after the back-off schedule
    data = r.wait_status(queue_id, {"delivered"})
    deferred, delivered = data["events"]
    assert (deferred["status"], deferred["category"], deferred["action"]) == (
        "deferred",
        "blacklist",
        "defer",
    )
    assert deferred["retry"] == "other-source" and deferred["local_address"] == first
    assert (delivered["status"], delivered["local_address"]) == ("delivered", second)

    listing = r.cli("queue", "blacklist", "--json")
    assert listing.returncode == 0, listing.stderr
    [parked] = json.loads(listing.stdout)["blacklist"]
    assert (parked["local_address"], parked["mx"]) == (first, "mx.example.test")
    assert "spamhaus" in parked["reason"]
    cleared = r.cli("queue", "blacklist", "--clear", parked["key"])
    assert cleared.returncode == 0, cleared.stderr
    assert json.loads(r.cli("queue", "blacklist", "--json").stdout)["blacklist"] == []


async def test_a_greylisted_delivery_is_retried_from_the_same_source_address(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    # greylisting remembers (client IP, sender, recipient): a retry from another address of the
    # pool would be greylisted afresh, so the back-off retry keeps the first attempt's address
    receiver = recording_receiver("127.0.0.33")
    pool = ["127.0.0.43", "127.0.0.44", "127.0.0.45"]
    receiver.respond("rcpt", "450 4.2.0 <grey@example.test>: Recipient address rejected: Greylisted", times=1)
    settings = route_to(dns_server, receiver)
    settings["zones"]["default"]["pool"] = [{"address": a} for a in pool]
    settings["queue"] = {"defer_times": [0.02]}  # the retry 1.2 s later
    r = relay(settings)
    queue_id = r.send("sender@example.com", ["grey@example.test"], MESSAGE)
    [message] = await receiver.wait_messages(1, within=20)
    deferred, delivered = r.wait_status(queue_id, {"delivered"})["events"]
    assert (deferred["status"], deferred["category"], deferred["action"]) == ("deferred", "greylist", "defer")
    assert delivered["local_address"] == deferred["local_address"] == message.peer[0]


def test_check_bounce_command(relay: RelayFactory) -> None:
    r = relay(start=False)
    import subprocess
    import sys

    reply = "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume\n"
    out = subprocess.run([sys.executable, "-m", "zonerelay.cli", "check-bounce", "-c", str(r.config_path)],
                         input=reply, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" : ", 1) for line in out.stdout.splitlines())
    assert lines == {
        "data": reply.strip(),
        "action": "defer",
        "message": "Rate limited",
        "category": "rate_limit",
        "code": "421",
        "status": "4.7.0",
    }


async def test_rate_limited_destination_slows_down_then_recovers(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.33")
    receiver.respond("rcpt", "450 4.7.1 Error: too much mail from 127.0.0.1", times=1)
    settings = route_to(dns_server, receiver)
    settings["bounces"] = {"rate_limit_pause": "2s"}
    r = relay(settings)
    started = time.monotonic()
    queue_id = r.send("sender@example.com", ["rcpt@example.test"], MESSAGE)
    await receiver.wait_messages(1, within=20)
    waited = time.monotonic() - started
    assert 2 <= waited < 10  # paused for rate_limit_pause, not the 5-minute back-off
    data = r.wait_status(queue_id, {"delivered"})
    deferred = data["events"][0]
    assert (deferred["status"], deferred["category"], deferred["retry"]) == (
        "deferred",
        "rate_limit",
        "slowed",
    )
    assert "slowing down default/example.test" in r.log()


async def test_deferral_past_the_maximum_queue_time_bounces_with_its_last_category(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.34")
    receiver.respond("rcpt", "451 4.7.1 Greylisting in action, please come back later")
    settings = route_to(dns_server, receiver)
    settings["queue"] = {"max_queue_time": "2s", "defer_times": [0.01]}
    r = relay(settings)
    queue_id = r.send("sender@example.com", ["rcpt@example.test"], MESSAGE)
    data = r.wait_status(queue_id, {"bounced"}, timeout=30)
    last = data["events"][-1]
    assert (last["status"], last["category"], last["action"], last["expired"]) == (
        "bounced",
        "greylist",
        "defer",
        True,
    )
    assert "gave up after" in data["messages"][0]["last_response"]


async def test_a_huge_rejection_is_classified_by_its_start_and_kept_clipped(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    # a receiver may answer with 256 lines of 8 KiB: the reply is read whole, but only its start
    # is classified (the rules' searches are not linear in the text) and stored, sent in
    # webhooks and DSNs
    receiver = recording_receiver("127.0.0.35")
    filler = "\r\n".join(f"550-5.1.1 {'x' * 8000}" for _ in range(200))
    receiver.respond("rcpt", f"550-5.1.1 <rcpt@example.test>: user unknown\r\n{filler}\r\n550 5.1.1 end")
    r = relay(route_to(dns_server, receiver))
    queue_id = r.send("sender@example.com", ["rcpt@example.test"], MESSAGE)
    data = r.wait_status(queue_id, {"bounced"}, timeout=30)
    assert last_event(data, data["messages"][0]["seq"])["category"] == "recipient"
    response = data["messages"][0]["last_response"]
    assert response.startswith("550 5.1.1 <rcpt@example.test>: user unknown")
    assert len(response) < 4200 and response.endswith("more characters]")
