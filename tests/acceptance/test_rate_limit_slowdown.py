"""A rate-limit reply slows the destination down, then it recovers: seen by the receiver (how
many connections it has open at once), in `zonerelay queue blacklist`, the log and /metrics."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.request
from collections.abc import Callable

from tests.fixtures.dns import DnsServer
from tests.fixtures.receivers import RecordingReceiver, Rule
from tests.fixtures.relay import Relay

RelayFactory = Callable[..., Relay]
ReceiverFactory = Callable[..., RecordingReceiver]

PAUSE, RECOVERY = 1.0, 4.0
BOUNCES = {"rate_limit_pause": f"{PAUSE}s", "rate_limit_recovery": f"{RECOVERY}s"}


class Sampler:
    """Notes the receiver's open connections every 20 ms, and when ``rule`` fired."""

    def __init__(self, receiver: RecordingReceiver) -> None:
        self.receiver = receiver
        self.samples: list[tuple[float, int]] = []
        self.rule: Rule | None = None
        self.fired: float | None = None

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            self.samples.append((now, self.receiver.current_connections))
            if self.fired is None and self.rule is not None and self.rule.times == 0:
                self.fired = now
            await asyncio.sleep(0.02)

    def most(self, start: float, end: float) -> int:
        assert self.fired is not None
        window = [n for t, n in self.samples if self.fired + start <= t <= self.fired + end]
        assert window, (start, end)
        return max(window)


def metric(r: Relay, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{r.api_port}/metrics", timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


async def test_a_rate_limit_reply_steps_the_providers_connections_down_then_they_recover(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.71")
    receiver.respond("data", None, hang=0.5)  # slow transactions, so that connections overlap
    # two domains hosted by one provider (MX rollup): a throttle from it slows both
    for n in (1, 2):
        dns_server.add_mx(f"d{n}.test", f"mx{n}.mail.prov.test", 10)
        dns_server.add_a(f"mx{n}.mail.prov.test", receiver.host)
    dns_server.start()
    r = relay(
        {
            "dns": {"nameservers": [dns_server.address], "timeout": 2},
            "queue": {"workers": 2, "lease_seconds": 3},  # housekeeping (the gauge) every second
            "delivery": {"idle_connection_seconds": 1},
            "zones": {"default": {"port": receiver.port}},
            "providers": {"prov": {"mx_suffixes": ["prov.test"], "max_connections": 4}},
            "bounces": {**BOUNCES, "rate_limit_gap": 0},  # no gap: what is measured is the cap
        }
    )
    sampler = Sampler(receiver)
    sampling = asyncio.create_task(sampler.run())
    try:
        body = b"From: <a@sender.test>\r\nSubject: load\r\n\r\nload\r\n"
        for n in range(100):
            await asyncio.to_thread(r.send, "a@sender.test", [f"r{n}@d{n % 2 + 1}.test"], body)
        deadline = time.monotonic() + 30
        while receiver.max_concurrent < 4:  # the provider's cap is used
            assert time.monotonic() < deadline, receiver.max_concurrent
            await asyncio.sleep(0.05)
        sampler.rule = receiver.respond("rcpt", "421 4.7.0 Too many connections, slow down", times=1)
        while sampler.fired is None:
            assert time.monotonic() < deadline + 30
            await asyncio.sleep(0.05)

        await asyncio.sleep(PAUSE + 1.5)  # the pause, then both workers run slowed
        listing = json.loads((await asyncio.to_thread(r.cli, "queue", "blacklist", "--json")).stdout)
        [slowed] = listing["slowed"]
        seen = (slowed["destination"], slowed["strikes"], slowed["connections"], slowed["full_connections"])
        assert seen == ("provider=prov", 1, 2, 4)
        gauge = await asyncio.to_thread(metric, r, "zonerelay_rate_limited_destinations")

        await receiver.wait_messages(100, within=90)
    finally:
        sampling.cancel()
    # Every worker learns of the strike within a second of it; its connections opened before
    # it are closed once their transaction is over. Then: at most half the provider's cap,
    # for both domains together, until one recovery period after the pause has passed.
    assert sampler.most(-2.0, 0.0) >= 3  # full speed before
    assert sampler.most(PAUSE + 1.5, PAUSE + RECOVERY - 0.2) <= 2
    assert sampler.most(PAUSE + RECOVERY + 1.5, PAUSE + RECOVERY + 60) >= 3  # back up
    assert gauge == 1.0
    log = r.log()
    assert "slowing down default/provider=prov for 1s (strike 1), then at most 2 connections" in log
    assert "rate limit recovered: default/provider=prov back to full speed" in log


async def test_a_slowed_domain_gets_gaps_between_transactions_until_it_recovers(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.72")
    receiver.respond("data", None, hang=0.1)
    rule = receiver.respond("rcpt", "451 4.7.28 rate limited, please slow down", times=1)
    dns_server.add_mx("gap.test", "mx.gap.test", 10).add_a("mx.gap.test", receiver.host).start()
    r = relay(
        {
            "dns": {"nameservers": [dns_server.address], "timeout": 2},
            "zones": {"default": {"port": receiver.port}},
            "bounces": {**BOUNCES, "rate_limit_gap": "1s"},
        }
    )
    arrived: list[float] = []
    fired: list[float] = []

    async def watch() -> None:  # when the 451 went out, when each message arrived
        while True:
            now = time.monotonic()
            if not fired and rule.times == 0:
                fired.append(now)
            arrived.extend([now] * (len(receiver.messages) - len(arrived)))
            await asyncio.sleep(0.02)

    watching = asyncio.create_task(watch())
    try:
        body = b"From: <a@sender.test>\r\nSubject: gap\r\n\r\ngap\r\n"
        await asyncio.to_thread(r.send, "a@sender.test", ["first@gap.test"], body)  # gets the 451
        deadline = time.monotonic() + 20
        while not fired:
            assert time.monotonic() < deadline, "the receiver never answered 451"
            await asyncio.sleep(0.02)
        for n in range(15):  # sent during the pause
            await asyncio.to_thread(r.send, "a@sender.test", [f"r{n}@gap.test"], body)
        await receiver.wait_messages(16, within=60)
        await asyncio.sleep(0.1)
    finally:
        watching.cancel()
    [strike] = fired
    # after the pause: one new transaction a second (the 20 ms polling blurs them a little) ...
    slowed = [t - strike for t in arrived if PAUSE + 0.5 <= t - strike <= PAUSE + RECOVERY - 0.2]
    assert len(slowed) >= 2, slowed
    assert min(b - a for a, b in itertools.pairwise(slowed)) >= 0.8, slowed
    # ... and once a recovery period has passed, no gap any more
    later = [t - strike for t in arrived if t - strike >= PAUSE + RECOVERY]
    assert any(b - a < 0.5 for a, b in itertools.pairwise(later)), later
