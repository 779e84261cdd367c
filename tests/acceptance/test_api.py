"""The HTTP API of a running relay (`zonerelay serve`, two delivery worker processes) against a
real DNS server and a real SMTP receiver."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from tests.fixtures.dns import DnsServer
from tests.fixtures.receivers import RecordingReceiver
from tests.fixtures.relay import Relay, route_to

RelayFactory = Callable[..., Relay]
ReceiverFactory = Callable[..., RecordingReceiver]


def settings(dns: DnsServer, receiver: RecordingReceiver, **extra: Any) -> dict[str, Any]:
    return {**route_to(dns, receiver), "queue": {"workers": 2}, **extra}


async def call(r: Relay, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"http://127.0.0.1:{r.api_port}{path}", **kwargs) as resp,
    ):
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.read()


def metric(page: str, name: str, **labels: str) -> float:
    """Value of one sample; 0 when the labelled child was never incremented."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in page.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        got_name, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if got_name == name and got == want:
            return float(value)
    return 0.0


async def wait_for(check: Callable[[], Any], within: float = 20.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.1)


async def test_send_json_is_delivered_and_send_raw_byte_for_byte(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.2")
    r = relay(settings(dns_server, receiver))
    status, queued = await call(
        r,
        "POST",
        "/send",
        json={
            "from": "Sender <sender@example.com>",
            "to": "rcpt@example.test",
            "bcc": "hidden@example.test",
            "subject": "hello",
            "text": "hello world!",
        },
        headers={"X-Authenticated-User": "andris", "X-Originating-IP": "192.0.2.7"},
    )
    assert status == 200, queued
    [got] = await receiver.wait_messages(1, within=20)
    assert got.mail_from == "sender@example.com"
    assert sorted(got.rcpt_tos) == ["hidden@example.test", "rcpt@example.test"]
    assert got.data.startswith(
        b"Received: from unknown ([192.0.2.7])\r\n\tby relay.test (zonerelay) with HTTP"
    )
    parsed = email.message_from_bytes(got.data, policy=email.policy.default)
    assert (parsed["Subject"], parsed["From"], parsed["To"], parsed["Bcc"]) == (
        "hello",
        "Sender <sender@example.com>",
        "rcpt@example.test",
        None,
    )
    assert parsed.get_content().strip() == "hello world!"

    raw = (
        b"From: Sender <sender@example.com>\r\nTo: rcpt@example.test\r\nSubject: raw\r\n"
        b"Date: Mon, 03 Oct 2016 12:26:32 +0000\r\nMessage-ID: <raw-1@example.com>\r\n\r\n"
        b"line one\r\n.leading dot\r\n\r\nlast line\r\n"
    )
    status, queued = await call(r, "POST", "/send-raw", data=raw, headers={"Content-Type": "message/rfc822"})
    assert status == 200, queued
    assert queued["response"] == f"Message queued as {queued['id']}"
    [_, second] = await receiver.wait_messages(2, within=20)
    assert second.data.startswith(b"Received: from unknown ([127.0.0.1])")
    assert second.data.endswith(raw)  # nothing changed but the prepended trace header
    trace = second.data[: -len(raw)].split(b"\r\n")[1:-1]
    assert trace and all(line.startswith(b"\t") for line in trace)  # one folded Received field


async def test_counters_lists_and_metrics_follow_deliveries_in_several_workers(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.3")
    receiver.respond("rcpt", "450 4.3.2 Service currently unavailable", rcpt="busy@example.test")
    r = relay(settings(dns_server, receiver))
    ids = []
    for n in range(4):
        status, queued = await call(
            r,
            "POST",
            "/send",
            json={"from": "s@example.com", "to": ["ok@example.test", "busy@example.test"], "text": f"m{n}"},
        )
        assert status == 200, queued
        ids.append(queued["id"])
    await receiver.wait_messages(4, within=20)

    async def counted() -> Any:
        _, counter = await call(r, "GET", "/counter/zone/default")
        return counter if counter["deferred"]["rows"] == 4 and counter["active"]["rows"] == 0 else None

    assert await wait_for(counted) == {"active": {"rows": 0}, "deferred": {"rows": 4}}
    _, listing = await call(r, "GET", "/queued/deferred/default")
    assert sorted(x["id"] for x in listing["list"]) == sorted(ids)
    assert {x["recipient"] for x in listing["list"]} == {"busy@example.test"}
    _, info = await call(r, "GET", f"/message/{ids[0]}")
    [pending] = info["messages"]
    assert pending["status"] == "DEFERRED" and pending["recipient"] == "busy@example.test"
    assert pending["deferred"]["response"].startswith("450 4.3.2") and pending["deferred"]["count"] == 1

    _, page = await call(r, "GET", "/metrics")
    text = page.decode()
    assert metric(text, "zonemta_delivery_status_total", result="delivered", zone="default") == 4
    assert metric(text, "zonemta_delivery_status_total", result="deferred", zone="default") == 4
    assert metric(text, "zonemta_message_push_total") == 4
    assert metric(text, "zonemta_queue_size", type="deferred") == 4
    assert metric(text, "zonemta_queue_size", type="queued") == 0

    # retry now: deferred rows go out again at once (and defer again), counted across workers
    status, answer = await call(r, "POST", "/queued/retry?domain=example.test")
    assert (status, answer["retried"]) == (200, 4)

    async def retried() -> Any:
        _, page = await call(r, "GET", "/metrics")
        text = page.decode()
        return metric(text, "zonemta_delivery_status_total", result="deferred", zone="default") == 8

    await wait_for(retried)
    status, answer = await call(r, "DELETE", f"/message/{ids[0]}")
    assert (status, answer["dropped"]) == (200, 1)
    _, page = await call(r, "GET", "/metrics")
    assert metric(page.decode(), "zonemta_queue_size", type="deferred") == 3
    _, counter = await call(r, "GET", "/counter/zone/default")
    assert counter["deferred"]["rows"] == 3


async def test_suppressed_recipient_is_dropped_silently(
    relay: RelayFactory, dns_server: DnsServer, recording_receiver: ReceiverFactory
) -> None:
    receiver = recording_receiver("127.0.0.4")
    r = relay(settings(dns_server, receiver))
    status, entry = await call(r, "POST", "/suppressionlist", json={"address": "gone@example.test"})
    assert status == 200
    status, queued = await call(
        r, "POST", "/send", json={"from": "s@example.com", "to": ["gone@example.test", "here@example.test"]}
    )
    assert status == 200 and queued["suppressed"] == ["gone@example.test"]
    [got] = await receiver.wait_messages(1, within=20)
    assert got.rcpt_tos == ("here@example.test",)
    _, page = await call(r, "GET", "/metrics")
    assert metric(page.decode(), "zonemta_message_drop_total") == 1
    await asyncio.sleep(0.5)
    assert len(receiver.messages) == 1  # no bounce, no second message
    status, _ = await call(r, "DELETE", "/suppressionlist", json={"id": entry["suppressed"]["id"]})
    assert status == 200


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_large_send_raw_is_streamed_with_bounded_memory(relay: RelayFactory) -> None:
    size = 256 * 1024 * 1024
    r = relay({"queue": {"workers": 0}, "api": {"max_size": "1GB"}})
    assert r.proc is not None
    before = peak_rss_kib(r.proc.pid)
    line = b"x" * 998 + b"\n"  # bare LF: normalised to CRLF on the way in
    block = line * 1024
    blocks = size // len(block)

    async def body() -> AsyncIterator[bytes]:
        yield b"From: s@example.com\nTo: big@example.test\nSubject: big\n\n"
        for _ in range(blocks):
            yield block

    started = time.monotonic()
    status, queued = await call(r, "POST", "/send-raw", data=body(), timeout=aiohttp.ClientTimeout(total=300))
    elapsed = time.monotonic() - started
    assert status == 200, queued
    after = peak_rss_kib(r.proc.pid)
    print(f"\n256 MiB /send-raw: {elapsed:.1f} s, supervisor peak RSS {before} -> {after} KiB")
    assert after - before < 64 * 1024, (before, after)
    _, info = await call(r, "GET", f"/message/{queued['id']}")
    assert info["meta"]["bodySize"] == blocks * 1024 * 1000  # CRLF: one byte more per line
    if os.environ.get("ZONERELAY_KEEP"):
        print(r.log()[-2000:])
