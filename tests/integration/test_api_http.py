"""The HTTP API over real HTTP: an aiohttp server on a loopback port, a real SQLite store and the
real ingest pipeline behind it (no delivery workers: the queue holds what was submitted)."""

from __future__ import annotations

import base64
import email
import email.policy
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from zonerelay.api.server import ApiServer
from zonerelay.api.submit import CrlfNormaliser
from zonerelay.config import Config
from zonerelay.ingest.pipeline import IngestPipeline
from zonerelay.store.base import DeliveryStatus, Outcome
from zonerelay.store.sqlite import SqliteStore


@dataclass
class Api:
    base: str
    http: aiohttp.ClientSession
    store: SqliteStore
    pipeline: IngestPipeline
    server: ApiServer

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, **kwargs) as resp:
            body = await resp.read()
            if resp.content_type == "application/json":
                return resp.status, json.loads(body)
            return resp.status, body

    async def send(self, message: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        status, body = await self.call("POST", "/send", json=message, **kwargs)
        assert status == 200, body
        result: dict[str, Any] = body
        return result


def make_config(tmp_path: Path, **api: Any) -> Config:
    return Config.model_validate(
        {
            "hostname": "relay.test",
            "queue": {"data_dir": str(tmp_path), "workers": 0},
            "zones": {"default": {}, "bulk": {}},
            "api": {"port": 0, "max_size": "1MB", **api},
        }
    )


async def start(tmp_path: Path, **api: Any) -> AsyncIterator[Api]:
    config = make_config(tmp_path, **api)
    store = SqliteStore(tmp_path / "queue.db")
    await store.open()
    pipeline = IngestPipeline(store, config)
    server = ApiServer(pipeline)
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield Api(f"http://127.0.0.1:{server.port}", http, store, pipeline, server)
    await server.stop()
    await store.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for a in start(tmp_path):
        yield a


MESSAGE: dict[str, Any] = {
    "from": {"name": "Sender Name", "address": "sender@example.com"},
    "to": "Rcpt <rcpt@example.test>, other@example.test",
    "bcc": ["hidden@example.net"],
    "subject": "hello",
    "text": "hello world!\n",
}


# -- /send ------------------------------------------------------------------------------------


async def test_send_queues_a_mime_message_with_the_reference_answer(api: Api) -> None:
    result = await api.send(
        {
            **MESSAGE,
            "html": "<p>hello <b>world</b></p>",
            "attachments": [{"filename": "a.bin", "content": base64.b64encode(b"\x00\x01binary").decode()}],
            "headers": {"X-Campaign": "spring"},
            "list": {"unsubscribe": {"url": "https://example.com/u", "comment": "Unsubscribe"}},
        },
        headers={"X-Authenticated-User": "andris", "X-Originating-IP": "123.123.123.123"},
    )
    qid = result["id"]
    assert result == {
        "id": qid,
        "from": "sender@example.com",
        "to": ["rcpt@example.test", "other@example.test", "hidden@example.net"],
        "response": f"Message queued as {qid}",
    }
    status, fetched = await api.call("GET", f"/fetch/{qid}")
    assert status == 200
    parsed = email.message_from_bytes(fetched, policy=email.policy.default)
    assert parsed["From"] == "Sender Name <sender@example.com>"
    assert parsed["To"] == "Rcpt <rcpt@example.test>, other@example.test"
    assert parsed["Bcc"] is None  # blind copies stay blind
    assert parsed["X-Campaign"] == "spring"
    assert parsed["List-Unsubscribe"] == "<https://example.com/u> (Unsubscribe)"
    assert parsed["Message-ID"].endswith("@relay.test>")
    assert parsed["Date"]  # added by the pipeline, as for SMTP
    body = parsed.get_body(("plain",))
    assert body is not None and body.get_content() == "hello world!\r\n"
    html = parsed.get_body(("html",))
    assert html is not None and "<b>world</b>" in html.get_content()
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_filename() == "a.bin" and attachment.get_content() == b"\x00\x01binary"
    assert b"\n" not in fetched.replace(b"\r\n", b"")  # CRLF only

    status, info = await api.call("GET", f"/message/{qid}")
    assert status == 200
    meta = info["meta"]
    assert (meta["interface"], meta["transtype"], meta["origin"], meta["user"]) == (
        "api",
        "HTTP",
        "123.123.123.123",
        "andris",
    )
    assert meta["from"] == "sender@example.com" and meta["id"] == qid
    assert [(m["seq"], m["recipient"], m["status"], m["zone"]) for m in info["messages"]] == [
        ("001", "rcpt@example.test", "QUEUED", "default"),
        ("002", "other@example.test", "QUEUED", "default"),
        ("003", "hidden@example.net", "QUEUED", "default"),
    ]


async def test_header_injection_through_json_fields_is_impossible(api: Api) -> None:
    for field, value in [
        ("subject", "hi\r\nBcc: victim@example.org"),
        ("subject", "hi\nX-Evil: 1"),
        ("from", {"name": "Eve\r\nBcc: victim@example.org", "address": "eve@example.com"}),
        ("to", "victim@example.org\r\nBcc: x@example.org"),
        ("headers", {"X-Ok": "a\r\nBcc: victim@example.org"}),
        ("headers", {"X-Ok\r\nBcc": "victim@example.org"}),
        ("messageId", "<a@b>\r\nBcc: victim@example.org"),
    ]:
        status, body = await api.call("POST", "/send", json={**MESSAGE, field: value})
        assert status == 400, (field, value, body)
        assert set(body) >= {"error", "code"}
    assert (await api.store.stats()).messages == 0


BAD_INPUT = [
    ("broken json", b'{"from": ', "invalid_json"),
    ("not an object", b"[1, 2]", "invalid_json"),
    ("deep nesting", b"[" * 100_000, "invalid_json"),
    ("wrong type", json.dumps({**MESSAGE, "subject": 5}).encode(), "invalid_field"),
    ("unknown field", json.dumps({**MESSAGE, "colour": "red"}).encode(), "invalid_field"),
    ("missing from", json.dumps({"to": "a@example.test", "text": "x"}).encode(), "missing_from"),
    ("missing recipients", json.dumps({"from": "a@example.com", "text": "x"}).encode(), "missing_recipients"),
    ("invalid address", json.dumps({**MESSAGE, "to": "not an address"}).encode(), "invalid_address"),
    ("invalid sender", json.dumps({**MESSAGE, "from": "a@@b"}).encode(), "invalid_address"),
    (
        "attachment from a path",
        json.dumps({**MESSAGE, "attachments": [{"path": "/etc/passwd"}]}).encode(),
        "invalid_field",
    ),
    (
        "attachment from a url",
        json.dumps({**MESSAGE, "attachments": [{"href": "http://example.com/x"}]}).encode(),
        "invalid_field",
    ),
    (
        "attachment not base64",
        json.dumps({**MESSAGE, "attachments": [{"content": "***"}]}).encode(),
        "invalid_attachment",
    ),
    ("unknown zone", json.dumps({**MESSAGE, "headers": {"X-Sending-Zone": "nope"}}).encode(), "unknown_zone"),
    (
        "structural header",
        json.dumps({**MESSAGE, "headers": {"Content-Type": "x/y"}}).encode(),
        "invalid_header",
    ),
    ("bad date", json.dumps({**MESSAGE, "date": "yesterday"}).encode(), "invalid_field"),
]


@pytest.mark.parametrize(("case", "body", "code"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
async def test_bad_input_to_send_is_a_4xx_with_a_json_reason(
    api: Api, case: str, body: bytes, code: str
) -> None:
    status, answer = await api.call("POST", "/send", data=body, headers={"Content-Type": "application/json"})
    assert status == 400, answer
    assert answer["code"] == code and answer["error"]


async def test_oversized_bodies_are_refused_with_413(api: Api) -> None:
    big = {**MESSAGE, "text": "x" * 1_100_000}
    as_json = {"Content-Type": "application/json"}
    status, answer = await api.call(
        "POST", "/send", data=io.BytesIO(json.dumps(big).encode()), headers=as_json
    )
    assert (status, answer["code"]) == (413, "too_large")
    huge = {**MESSAGE, "text": "x" * 2_000_000}
    status, answer = await api.call(
        "POST", "/send", data=io.BytesIO(json.dumps(huge).encode()), headers=as_json
    )
    assert status == 413 and answer["code"] in ("too_large",)
    raw = b"From: a@example.com\r\nTo: b@example.test\r\n\r\n" + b"y" * 1_100_000

    async def stream() -> AsyncIterator[bytes]:  # no Content-Length: found out while reading
        for i in range(0, len(raw), 100_000):
            yield raw[i : i + 100_000]

    status, answer = await api.call("POST", "/send-raw", data=stream())
    assert (status, answer["code"]) == (413, "too_large")
    status, answer = await api.call("POST", "/send-raw", data=io.BytesIO(raw))
    assert (status, answer["code"]) == (413, "too_large")
    assert (await api.store.stats()).messages == 0


async def test_bad_ids_unknown_paths_and_methods(api: Api) -> None:
    for path in ("/message/xyz", "/fetch/ZZZZZZZZZZZZZZZZZZ", "/message/0123"):
        status, answer = await api.call("GET", path)
        assert (status, answer["code"]) == (400, "invalid_id")
    for path in ("/message/0123456789abcdef01", "/fetch/0123456789abcdef01"):
        status, answer = await api.call("GET", path)
        assert (status, answer["code"]) == (404, "not_found")
    status, answer = await api.call("POST", "/message/0123456789abcdef01/retry")
    assert (status, answer["code"]) == (404, "not_found")
    status, answer = await api.call("GET", "/nowhere")
    assert (status, answer["code"]) == (404, "not_found")
    status, answer = await api.call("PUT", "/send")
    assert (status, answer["code"]) == (405, "method_not_allowed")
    status, answer = await api.call("GET", "/counter/zone/nope")
    assert (status, answer["code"]) == (404, "unknown_zone")
    status, answer = await api.call("GET", "/queued/sideways/default")
    assert status == 404 and answer["code"] == "not_found"
    status, answer = await api.call("POST", "/queued/retry")
    assert (status, answer["code"]) == (400, "missing_selector")


async def test_store_down_is_503(tmp_path: Path) -> None:
    async for api in start(tmp_path):
        await api.store.close()
        status, answer = await api.call("GET", "/counter/zone/default")
        assert status == 503 and answer["code"].startswith("store_")
        status, answer = await api.call("POST", "/send", json=MESSAGE)
        assert status == 503 and answer["error"]


# -- /send-raw ----------------------------------------------------------------------------------


async def test_send_raw_takes_the_envelope_from_headers_and_normalises_line_endings(api: Api) -> None:
    raw = (
        b"From: Sender <sender@example.com>\nTo: a@example.test\nCc: b@example.test\nSubject: Hello!\n"
        b"\nHello world\n.dot"
    )
    status, result = await api.call(
        "POST",
        "/send-raw",
        data=raw,
        headers={"Content-Type": "message/rfc822", "X-Authenticated-User": "andris"},
    )
    assert status == 200, result
    assert (result["from"], result["to"]) == ("sender@example.com", ["a@example.test", "b@example.test"])
    status, fetched = await api.call("GET", f"/fetch/{result['id']}")
    headers, _, body = fetched.partition(b"\r\n\r\n")
    assert body == b"Hello world\r\n.dot\r\n"  # CRLF everywhere, final line break added
    assert b"From: Sender <sender@example.com>\r\nTo: a@example.test\r\n" in headers
    _, info = await api.call("GET", f"/message/{result['id']}")
    assert info["meta"]["user"] == "andris" and info["meta"]["interface"] == "api"


async def test_send_raw_envelope_from_query(api: Api) -> None:
    raw = b"From: x@example.com\r\nTo: shown@example.test\r\n\r\nbody\r\n"
    status, result = await api.call(
        "POST", "/send-raw?from=bounce@example.com&to=real@example.test,other@example.test", data=raw
    )
    assert status == 200, result
    assert (result["from"], result["to"]) == (
        "bounce@example.com",
        ["real@example.test", "other@example.test"],
    )
    status, answer = await api.call("POST", "/send-raw", data=b"Subject: no one\r\n\r\nx\r\n")
    assert (status, answer["code"]) == (400, "missing_recipients")
    status, answer = await api.call("POST", "/send-raw?to=bad", data=raw)
    assert (status, answer["code"]) == (400, "invalid_address")
    status, answer = await api.call("POST", "/send-raw", data=raw, headers={"X-Originating-IP": "not-ip"})
    assert (status, answer["code"]) == (400, "invalid_header")


def test_crlf_normaliser_for_any_chunking() -> None:
    text = b"a\nb\r\nc\rd\r\r\ne\n\n"
    expected = b"a\r\nb\r\nc\r\nd\r\n\r\ne\r\n\r\n"
    for size in (1, 2, 3, 5, len(text)):
        n = CrlfNormaliser()
        out = b"".join(n.feed(text[i : i + size]) for i in range(0, len(text), size)) + n.finish()
        assert out == expected, size
    n = CrlfNormaliser()
    assert n.feed(b"x\r") + n.finish() == b"x\r\n"
    n = CrlfNormaliser()
    assert n.feed(b"no newline") + n.finish() == b"no newline\r\n"


# -- suppression ----------------------------------------------------------------------------------


async def test_suppression_add_list_delete_and_effect(api: Api) -> None:
    status, one = await api.call("POST", "/suppressionlist", json={"address": "Blocked@Example.test"})
    assert status == 200 and one["suppressed"]["address"] == "blocked@example.test"
    status, two = await api.call("POST", "/suppressionlist", json={"domain": "suppressed-domain.com"})
    assert status == 200 and two["suppressed"]["domain"] == "suppressed-domain.com"
    _, listing = await api.call("GET", "/suppressionlist")
    assert listing == {"suppressed": [one["suppressed"], two["suppressed"]]}

    result = await api.send(
        {**MESSAGE, "to": ["blocked@example.test", "ok@example.test", "x@suppressed-domain.com"], "bcc": []}
    )
    assert result["suppressed"] == ["blocked@example.test", "x@suppressed-domain.com"]
    _, info = await api.call("GET", f"/message/{result['id']}")
    assert [(m["seq"], m["recipient"]) for m in info["messages"]] == [("002", "ok@example.test")]
    # every recipient suppressed: accepted (200, an id) but nothing is queued, nobody notified
    only = await api.send({**MESSAGE, "to": "blocked@example.test", "bcc": []})
    assert only["suppressed"] == ["blocked@example.test"]
    _, info = await api.call("GET", f"/message/{only['id']}")
    assert info["messages"] == []
    stats = await api.store.stats()
    assert (stats.queued, stats.deferred) == (1, 0)

    status, deleted = await api.call("DELETE", "/suppressionlist", json={"id": one["suppressed"]["id"]})
    assert (status, deleted) == (200, {"deleted": one["suppressed"]["id"]})
    status, answer = await api.call("DELETE", "/suppressionlist", json={"id": one["suppressed"]["id"]})
    assert (status, answer["code"]) == (404, "not_found")
    again = await api.send({**MESSAGE, "to": "blocked@example.test", "bcc": []})
    assert "suppressed" not in again
    for bad in ({"address": "nope"}, {"domain": "a b"}, {}, {"address": "a@b.c", "domain": "b.c"}, {"x": 1}):
        status, answer = await api.call("POST", "/suppressionlist", json=bad)
        assert status == 400 and answer["code"], bad


# -- queue inspection and actions -----------------------------------------------------------------


async def defer(
    api: Api, qid: str, seq: str, response: str = "450 4.3.2 Service currently unavailable"
) -> None:
    now = time.time()
    claimed = await api.store.claim("test-worker", 1000, 60, now + 1)
    assert any(d.key == (qid, seq) for d in claimed)
    outcome = Outcome(DeliveryStatus.DEFERRED, response, now, next_attempt=now + 3600)
    assert await api.store.record_outcome((qid, seq), "test-worker", outcome)
    await api.store.release("test-worker")


async def test_counters_lists_and_message_move_as_deliveries_defer(api: Api) -> None:
    first = await api.send({**MESSAGE, "to": ["a@example.test", "b@example.test"], "bcc": []})
    second = await api.send(
        {**MESSAGE, "to": "c@example.org", "bcc": [], "headers": {"X-Sending-Zone": "bulk"}}
    )
    assert await api.call("GET", "/counter/zone/default") == (
        200,
        {"active": {"rows": 2}, "deferred": {"rows": 0}},
    )
    assert await api.call("GET", "/counter/zone/") == (
        200,
        {
            "bulk": {"active": {"rows": 1}, "deferred": {"rows": 0}},
            "default": {"active": {"rows": 2}, "deferred": {"rows": 0}},
        },
    )
    _, active = await api.call("GET", "/queued/active/default")
    assert [(r["id"], r["recipient"]) for r in active["list"]] == [
        (first["id"], "a@example.test"),
        (first["id"], "b@example.test"),
    ]
    await defer(api, first["id"], "002")
    assert await api.call("GET", "/counter/zone/default") == (
        200,
        {"active": {"rows": 1}, "deferred": {"rows": 1}},
    )
    _, deferred = await api.call("GET", "/queued/deferred/default")
    assert deferred == {
        "list": [{"id": first["id"], "seq": "002", "zone": "default", "recipient": "b@example.test"}]
    }
    _, info = await api.call("GET", f"/message/{first['id']}")
    [queued, late] = info["messages"]
    assert queued["status"] == "QUEUED" and late["status"] == "DEFERRED"
    assert late["deferred"]["count"] == 1
    assert late["deferred"]["response"] == "450 4.3.2 Service currently unavailable"
    assert late["deferred"]["next"] > late["deferred"]["last"] >= late["deferred"]["first"]

    # retry now: the deferred row is due at once
    status, answer = await api.call("POST", f"/message/{first['id']}/retry")
    assert (status, answer) == (200, {"id": first["id"], "retried": 1})
    due = await api.store.claim("w", 100, 60, time.time() + 1)
    assert {d.key for d in due} >= {(first["id"], "002")}
    await api.store.release("w")

    # bulk by recipient domain, then by zone
    status, answer = await api.call("DELETE", "/queued?domain=example.org")
    assert (status, answer["dropped"]) == (200, 1)
    assert await api.call("GET", "/counter/zone/bulk") == (
        200,
        {"active": {"rows": 0}, "deferred": {"rows": 0}},
    )
    status, answer = await api.call("POST", "/queued/retry?zone=default")
    assert status == 200 and answer["retried"] >= 0
    status, answer = await api.call("DELETE", f"/message/{first['id']}")
    assert (status, answer) == (200, {"id": first["id"], "dropped": 2})
    _, info = await api.call("GET", f"/message/{first['id']}")
    assert info["messages"] == []
    status, answer = await api.call("GET", f"/fetch/{first['id']}")
    assert (status, answer["code"]) == (404, "body_gone")
    assert (await api.store.stats()).queued == 0
    assert second["id"] != first["id"]


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    raise AssertionError(f"{prefix!r} not in metrics:\n{text}")


async def test_metrics_queue_size_equals_the_queue_and_counts_drops(api: Api) -> None:
    _, text = await api.call("GET", "/metrics")
    before_push = metric(text.decode(), "zonemta_message_push_total")
    before_drop = metric(text.decode(), "zonemta_message_drop_total")
    await api.call("POST", "/suppressionlist", json={"domain": "gone.example"})
    first = await api.send(
        {**MESSAGE, "to": ["a@example.test", "b@example.test", "x@gone.example"], "bcc": []}
    )
    await api.send({**MESSAGE, "to": "c@example.test", "bcc": []})
    await defer(api, first["id"], "001")
    status, text = await api.call("GET", "/metrics")
    assert status == 200
    page = text.decode()
    stats = await api.store.stats()
    assert metric(page, "zonemta_queue_size", type="queued") == stats.queued == 2
    assert metric(page, "zonemta_queue_size", type="deferred") == stats.deferred == 1
    assert metric(page, "zonemta_message_push_total") == before_push + 2
    assert metric(page, "zonemta_message_drop_total") == before_drop + 1
    for name in ("zonemta_blacklisted", "zonemta_connection_pool_size"):
        assert name in page


async def test_openapi_lists_every_route(api: Api) -> None:
    status, doc = await api.call("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in api.server.app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    normalised = {(m, p.replace("{kind:active|deferred}", "{kind}")) for m, p in routes}
    assert normalised == documented


async def test_auth_bearer_and_basic(tmp_path: Path) -> None:
    async for api in start(tmp_path / "bearer", auth="Bearer s3cret"):
        status, answer = await api.call("GET", "/counter/zone/")
        assert (status, answer["code"]) == (401, "unauthorized")
        status, _ = await api.call("GET", "/counter/zone/", headers={"Authorization": "Bearer wrong"})
        assert status == 401
        status, _ = await api.call("GET", "/metrics", headers={"Authorization": "Bearer s3cret"})
        assert status == 200
    async for api in start(tmp_path / "basic", auth="Basic ops:pa:ss"):
        status, _ = await api.call(
            "GET", "/suppressionlist", headers={"Authorization": aiohttp.encode_basic_auth("ops", "wrong")}
        )
        assert status == 401
        status, _ = await api.call(
            "GET", "/suppressionlist", headers={"Authorization": aiohttp.encode_basic_auth("ops", "pa:ss")}
        )
        assert status == 200
