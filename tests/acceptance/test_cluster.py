"""Several instances, one queue: PostgreSQL store, Redis coordination, a dead instance's work
taken over by the others, and outages of PostgreSQL that lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import smtplib
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fixtures.dns import DnsServer
from tests.fixtures.receivers import RecordingReceiver
from tests.fixtures.relay import Relay
from tests.fixtures.services import OwnPostgres, start_own_postgres
from tests.fixtures.webhooks import WebhookReceiver

RelayFactory = Callable[..., Relay]
ReceiverFactory = Callable[..., RecordingReceiver]


def scrape(relay: Relay) -> str:
    """GET /metrics of one instance."""
    with urllib.request.urlopen(f"http://127.0.0.1:{relay.api_port}/metrics", timeout=10) as page:
        text: str = page.read().decode()
        return text


def message(n: int) -> bytes:
    return (
        f"From: s@example.com\r\nTo: r@example.test\r\nSubject: cluster {n}\r\n"
        f"Message-ID: <cluster-{n}@client.test>\r\n\r\nbody {n}\r\n"
    ).encode()


def cluster_settings(dsn: str, redis_url: str, prefix: str, instance: str, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "store": {"backend": "postgres", "dsn": dsn},
        "redis": {"url": redis_url, "prefix": prefix},
        "queue": {"instance_id": instance, "workers": 1, "lease_seconds": 600},
    }
    for key, value in extra.items():
        settings[key] = {**settings.get(key, {}), **value}
    return settings


def stats(r: Relay) -> dict[str, Any]:
    result = r.cli("queue", "stats", "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def received_ids(receiver: RecordingReceiver) -> Counter[str]:
    ids: Counter[str] = Counter()
    for m in receiver.messages:
        for line in m.data.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                ids[line.split(b":", 1)[1].strip().decode()] += 1
    return ids


def test_serve_refuses_an_unmigrated_database_until_store_migrate(
    postgres_dsn: str, redis_url: str, redis_prefix: str, relay: RelayFactory
) -> None:
    r = relay(cluster_settings(postgres_dsn, redis_url, redis_prefix, "a"), start=False)
    with pytest.raises(RuntimeError) as refused:
        r.start()
    assert "zonerelay store migrate" in str(refused.value)
    migrated = r.cli("store", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "created" in migrated.stdout
    again = r.cli("store", "migrate")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    r.start()
    queue_id = r.send("s@example.com", ["r@example.test"], message(0))
    # stored and handed to the workers; example.test has no DNS here, so a worker may already
    # have tried it (NXDOMAIN bounces) by the time this looks
    (delivery,) = r.show(queue_id)["messages"]
    assert delivery["recipient"] == "r@example.test"
    assert delivery["status"] in {"queued", "deferred", "bounced"}


async def test_two_instances_share_the_queue_and_survive_kill_9(
    postgres_dsn: str,
    redis_url: str,
    redis_prefix: str,
    relay: RelayFactory,
    dns_server: DnsServer,
    recording_receiver: ReceiverFactory,
) -> None:
    receiver = recording_receiver("127.0.0.31")
    slow = receiver.respond("data", hang=1.5)  # deliveries take a while: some are in flight at the kill
    dns_server.add_mx("example.test", "mx.example.test").add_a("mx.example.test", receiver.host).start()
    common = {"dns": {"nameservers": [dns_server.address]}, "zones": {"default": {"port": receiver.port}}}
    a = relay(cluster_settings(postgres_dsn, redis_url, redis_prefix, "a", **common), start=False)
    assert a.cli("store", "migrate").returncode == 0
    a.start()
    b = relay(cluster_settings(postgres_dsn, redis_url, redis_prefix, "b", **common))

    sent = [a.send("s@example.com", ["r@example.test"], message(n)) for n in range(20)]
    sent += [b.send("s@example.com", ["r@example.test"], message(n)) for n in range(20, 40)]

    # both instances are live; wait until a holds leases of deliveries it is sending
    deadline = time.monotonic() + 30
    while True:
        instances = {i["id"]: i for i in stats(b)["instances"]}
        if instances.get("a", {}).get("leases", 0) > 0 and "b" in instances:
            break
        assert time.monotonic() < deadline, (instances, a.log()[-3000:])
        await asyncio.sleep(0.1)
    assert instances["a"]["state"] == "live" and instances["b"]["state"] == "live"
    # every instance's /metrics shows the whole cluster
    page = await asyncio.to_thread(scrape, b)
    assert 'zonerelay_instance_up{instance="a"} 1.0' in page
    assert 'zonerelay_instance_up{instance="b"} 1.0' in page
    assert 'zonerelay_instance_leases{instance="a"}' in page
    a.kill9()
    held_by_a = instances["a"]["leases"]
    slow.times = 0  # the receiver answers at once from now on

    # b releases a's leases (lease_seconds is 600: only the sweep can bring them back soon)
    deadline = time.monotonic() + 60
    while (s := stats(b))["delivered"] < 40:
        assert time.monotonic() < deadline, (s, b.log()[-4000:])
        await asyncio.sleep(0.25)
    assert (s["queued"], s["deferred"], s["bounced"]) == (0, 0, 0)
    assert "released" in b.log() and "instance a has not sent a heartbeat" in b.log()
    assert {i["id"]: i["state"] for i in s["instances"]} == {"b": "live"}

    ids = received_ids(receiver)
    assert set(ids) == {f"<cluster-{n}@client.test>" for n in range(40)}  # nothing lost
    duplicates = sum(ids.values()) - 40
    print(f"kill -9 of instance a holding {held_by_a} leases: {duplicates} duplicate deliveries")
    assert duplicates <= held_by_a  # only what a had in flight can arrive twice
    assert b.show(sent[0])["messages"][0]["status"] == "delivered"  # a's, delivered by b


async def test_zone_cap_and_destination_rate_hold_across_instances(
    postgres_dsn: str,
    redis_url: str,
    redis_prefix: str,
    relay: RelayFactory,
    dns_server: DnsServer,
    recording_receiver: ReceiverFactory,
) -> None:
    receiver = recording_receiver("127.0.0.32")
    receiver.respond("data", hang=0.3)  # keep connections busy so that both instances want more
    dns_server.add_mx("example.test", "mx.example.test").add_mx("rated.test", "mx.example.test")
    dns_server.add_a("mx.example.test", receiver.host).start()
    common = {
        "dns": {"nameservers": [dns_server.address]},
        "zones": {
            "default": {
                "port": receiver.port,
                "connections": 2,  # in all, not per instance
                "domain_config": {"rated.test": {"rate": "6/hour"}},
            }
        },
    }
    a = relay(cluster_settings(postgres_dsn, redis_url, redis_prefix, "a", **common), start=False)
    assert a.cli("store", "migrate").returncode == 0
    a.start()
    b = relay(cluster_settings(postgres_dsn, redis_url, redis_prefix, "b", **common))
    for n, r in enumerate([a, b] * 6):
        r.send("s@example.com", ["r@example.test"], message(n))
        r.send("s@example.com", ["r@rated.test"], message(100 + n))

    deadline = time.monotonic() + 60
    while len(ids := received_ids(receiver)) < 12 + 6:
        assert time.monotonic() < deadline, (len(ids), b.log()[-3000:])
        await asyncio.sleep(0.2)
    await asyncio.sleep(2.0)  # a rate held per instance would let 6 more through by now
    rated = [i for i in received_ids(receiver) if int(i.split("-")[1].split("@")[0]) >= 100]
    assert len(rated) == 6, rated
    assert receiver.max_concurrent <= 2, receiver.max_concurrent
    assert stats(b)["queued"] + stats(b)["deferred"] == 6  # the rest wait for the next hour
    a.kill9()  # rather than wait for the rate-limited deliveries to be given back
    b.kill9()


def try_send(r: Relay, n: int) -> str | None:
    """Submit like an MTA client: None when the relay answered 4xx (try again later)."""
    try:
        with smtplib.SMTP("127.0.0.1", r.smtp_port, timeout=30) as client:
            client.ehlo("client.test")
            client.mail("s@example.com")
            code, _ = client.rcpt("r@example.test")
            if code != 250:
                assert 400 <= code < 500, code
                return None
            code, text = client.data(message(n))
            if code != 250:
                assert code == 451 and b"4.3.0" in text, (code, text)
                return None
            return text.decode().rsplit(" ", 1)[-1]
    except smtplib.SMTPResponseException as exc:
        assert 400 <= exc.smtp_code < 500, exc
        return None


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A PostgreSQL server of this test's own, which it may stop and start."""
    server = start_own_postgres()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


async def test_postgres_restart_under_load_loses_nothing(
    own_postgres: OwnPostgres, relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.33")
    dns_server.add_mx("example.test", "mx.example.test").add_a("mx.example.test", receiver.host).start()
    r = relay(
        {
            "store": {"backend": "postgres", "dsn": own_postgres.dsn, "connect_timeout": 2},
            "dns": {"nameservers": [dns_server.address]},
            "zones": {"default": {"port": receiver.port}},
        },
        start=False,
    )
    assert r.cli("store", "migrate").returncode == 0
    r.start()
    accepted: dict[int, str] = {}
    refused: list[int] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set():
            queue_id = try_send(r, n)
            if queue_id is None:
                refused.append(n)
                time.sleep(0.1)
            else:
                accepted[n] = queue_id
            n += 1

    sender = threading.Thread(target=load)
    sender.start()
    try:
        await asyncio.sleep(2)
        await asyncio.to_thread(own_postgres.stop, "fast")  # connections are cut, writes fail
        await asyncio.sleep(2)
        await asyncio.to_thread(own_postgres.start)
        await asyncio.sleep(3)  # and the relay takes mail again by itself
    finally:
        stop.set()
        await asyncio.to_thread(sender.join, 60)
    assert refused  # the outage was seen, as 4xx (the client keeps the message)
    assert max(accepted) > max(refused)  # and mail was accepted again after it
    deadline = time.monotonic() + 60
    while len(ids := received_ids(receiver)) < len(accepted):
        assert time.monotonic() < deadline, (len(ids), len(accepted), r.log()[-4000:])
        await asyncio.sleep(0.2)
    assert set(ids) == {f"<cluster-{n}@client.test>" for n in accepted}  # every 250 was delivered
    print(f"PostgreSQL restart: {len(accepted)} accepted, {len(refused)} refused with 4xx, none lost")


async def test_one_instance_sends_dsns_and_webhooks_and_another_takes_over_after_kill_9(
    postgres_dsn: str,
    redis_url: str,
    redis_prefix: str,
    relay: RelayFactory,
    dns_server: DnsServer,
    recording_receiver: ReceiverFactory,
    webhook_receiver: WebhookReceiver,
) -> None:
    webhook_receiver.fail_left = 0
    destination = recording_receiver("127.0.0.33")
    senders_mx = recording_receiver("127.0.0.34", port=destination.port)  # the zone's one port
    destination.respond("rcpt", "550 5.1.1 <nobody@example.test>: user unknown", rcpt="nobody@example.test")
    dns_server.add_mx("example.test", "mx.example.test").add_a("mx.example.test", destination.host)
    dns_server.add_mx("example.com", "mx.example.com").add_a("mx.example.com", senders_mx.host).start()
    common = {
        "dns": {"nameservers": [dns_server.address], "timeout": 2},
        "zones": {"default": {"port": destination.port}},
        "webhooks": {"events_url": f"http://127.0.0.1:{webhook_receiver.port}/events"},
    }
    a = relay(cluster_settings(postgres_dsn, redis_url, redis_prefix, "a", **common), start=False)
    assert a.cli("store", "migrate").returncode == 0
    a.start()
    b = relay(cluster_settings(postgres_dsn, redis_url, redis_prefix, "b", **common))
    rcpts = ["ok@example.test", "nobody@example.test"]

    def send_all(n: int) -> list[str]:
        return [r.send("sender@example.com", rcpts, message(i)) for i in range(n, n + 10) for r in (a, b)]

    def arrived(sent: list[str], within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            got = {e["id"] for _, e, _ in webhook_receiver.events()}
            dsns = len(senders_mx.messages)
            if set(sent) <= got and dsns >= len(sent):
                return
            assert time.monotonic() < deadline, (len(got), dsns, a.log()[-2000:], b.log()[-2000:])
            time.sleep(0.2)

    first = send_all(0)  # 20 messages, 20 DSNs
    await asyncio.to_thread(arrived, first, 60)
    await asyncio.sleep(2)  # time for any second copy to arrive
    events = Counter(e["event_id"] for _, e, _ in webhook_receiver.events())
    # 40 events of the messages and 20 of their DSNs' deliveries, each once: one sender in the
    # cluster, not one per instance
    assert len(events) == 60 and set(events.values()) == {1}
    assert len(senders_mx.messages) == 20
    senders = [r for r in (a, b) if "this instance sends the outbox" in r.log()]
    assert len(senders) == 1, (a.log()[-2000:], b.log()[-2000:])
    [sender] = senders
    other = b if sender is a else a
    assert "another instance sends the outbox" in other.log()

    sender.kill9()  # its database connection, and with it the lock, goes with it
    survivor_sends = [other.send("sender@example.com", rcpts, message(100 + i)) for i in range(5)]
    await asyncio.to_thread(arrived, first + survivor_sends, 60)
    assert "this instance sends the outbox" in other.log()
    other.kill9()
