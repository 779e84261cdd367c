"""Queue inspection and operator actions: ZoneMTA's counters, lists, /message and /fetch, plus
retry-now and drop for one message or in bulk by zone and recipient domain."""

from __future__ import annotations

import re

from aiohttp import web

from zonerelay.api.context import context
from zonerelay.api.errors import ApiError
from zonerelay.store.base import BodyGone, Delivery, DeliveryStatus, QueueStore
from zonerelay.store.ids import is_queue_id

#: ZoneMTA's list endpoints return the first 1 000 rows.
LIST_LIMIT = 1000
_KIND = {"active": DeliveryStatus.QUEUED, "deferred": DeliveryStatus.DEFERRED}
_DOMAIN = re.compile(r"[^\s@<>\[\]\"\\,;:]{1,253}")


def _store(request: web.Request) -> QueueStore:
    return context(request).store


def _ms(ts: float | None) -> int | None:
    return None if ts is None else int(ts * 1000)


async def _known_zones(request: web.Request) -> tuple[set[str], dict[str, dict[str, int]]]:
    stats = await _store(request).stats()
    return set(context(request).zones) | set(stats.by_zone), stats.by_zone


def _counter(counts: dict[str, int]) -> dict[str, dict[str, int]]:
    return {"active": {"rows": counts.get("queued", 0)}, "deferred": {"rows": counts.get("deferred", 0)}}


async def counter_all(request: web.Request) -> web.Response:
    """GET /counter/zone/: {zone: {"active": {"rows"}, "deferred": {"rows"}}} for every zone."""
    zones, by_zone = await _known_zones(request)
    return web.json_response({zone: _counter(by_zone.get(zone, {})) for zone in sorted(zones)})


async def counter_zone(request: web.Request) -> web.Response:
    zone = request.match_info["zone"]
    zones, by_zone = await _known_zones(request)
    if zone not in zones:
        raise ApiError(404, "unknown_zone", f"no zone named {zone!r}")
    return web.json_response(_counter(by_zone.get(zone, {})))


async def queued(request: web.Request) -> web.Response:
    """GET /queued/{active|deferred}/{zone}: the first 1 000 rows, oldest first."""
    kind, zone = request.match_info["kind"], request.match_info["zone"]
    zones, _ = await _known_zones(request)
    if zone not in zones:
        raise ApiError(404, "unknown_zone", f"no zone named {zone!r}")
    rows = await _store(request).list_deliveries(statuses=(_KIND[kind],), zone=zone, limit=LIST_LIMIT)
    return web.json_response(
        {"list": [{"id": d.id, "seq": d.seq, "zone": d.zone, "recipient": d.recipient} for d in rows]}
    )


def queue_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not is_queue_id(value):
        raise ApiError(400, "invalid_id", f"{value!r} is not a queue id (18 lowercase hex characters)")
    return value


def _pending_json(d: Delivery) -> dict[str, object]:
    entry: dict[str, object] = {
        "id": d.id,
        "seq": d.seq,
        "zone": d.zone,
        "recipient": d.recipient,
        "status": d.status.value.upper(),
    }
    if d.status is DeliveryStatus.DEFERRED:
        entry["deferred"] = {
            "first": _ms(d.first_failure),
            "count": d.attempts,
            "last": _ms(d.last_attempt),
            "next": _ms(d.next_attempt),
            "response": d.last_response,
        }
    else:
        entry["queued"] = {"next": _ms(d.next_attempt)}
    return entry


async def message(request: web.Request) -> web.Response:
    """GET /message/{id}: meta and the recipients still queued or deferred (not sent/bounced)."""
    mid = queue_id(request)
    store = _store(request)
    stored = await store.get_message(mid)
    if stored is None:
        raise ApiError(404, "not_found", f"no message {mid} in the queue")
    deliveries = await store.get_deliveries(mid)
    pending = [_pending_json(d) for d in deliveries if not d.status.is_final]
    return web.json_response({"meta": stored.meta, "messages": pending})


async def fetch(request: web.Request) -> web.StreamResponse:
    """GET /fetch/{id}: the stored message (headers + body chunks), streamed, as message/rfc822."""
    mid = queue_id(request)
    store = _store(request)
    stored = await store.get_message(mid)
    if stored is None:
        raise ApiError(404, "not_found", f"no message {mid} in the queue")
    chunks = store.read_body(mid).__aiter__()
    try:
        first = await anext(chunks, b"")
    except BodyGone:
        raise ApiError(404, "body_gone", f"the body of {mid} was removed: no delivery needs it") from None
    response = web.StreamResponse(headers={"Content-Type": "message/rfc822"})
    response.content_length = len(stored.headers) + stored.body_size
    await response.prepare(request)
    await response.write(stored.headers)
    if first:
        await response.write(first)
    async for chunk in chunks:  # a failure here cuts the connection: the length says it is short
        await response.write(chunk)
    await response.write_eof()
    return response


async def _must_exist(request: web.Request, mid: str) -> None:
    if await _store(request).get_message(mid) is None:
        raise ApiError(404, "not_found", f"no message {mid} in the queue")


async def retry_message(request: web.Request) -> web.Response:
    """POST /message/{id}/retry: its pending deliveries are tried at the next claim."""
    mid = queue_id(request)
    await _must_exist(request, mid)
    count = await _store(request).retry_now(context(request).clock(), message_id=mid)
    return web.json_response({"id": mid, "retried": count})


async def drop_message(request: web.Request) -> web.Response:
    """DELETE /message/{id}: drop every pending delivery (no bounce is sent)."""
    mid = queue_id(request)
    await _must_exist(request, mid)
    count = await _store(request).drop_deliveries(context(request).clock(), message_id=mid)
    return web.json_response({"id": mid, "dropped": count})


async def _selector(request: web.Request) -> tuple[str | None, str | None]:
    zone, domain = request.query.get("zone"), request.query.get("domain")
    if zone is None and domain is None:
        raise ApiError(400, "missing_selector", "give zone=, domain= or both")
    if zone is not None:
        zones, _ = await _known_zones(request)
        if zone not in zones:
            raise ApiError(404, "unknown_zone", f"no zone named {zone!r}")
    if domain is not None:
        domain = domain.strip().rstrip(".").lower()
        if not _DOMAIN.fullmatch(domain):
            raise ApiError(400, "invalid_domain", f"{domain!r} is not a domain")
    return zone, domain


async def retry_bulk(request: web.Request) -> web.Response:
    """POST /queued/retry?zone=&domain=: every matching pending delivery is due now."""
    zone, domain = await _selector(request)
    count = await _store(request).retry_now(context(request).clock(), zone=zone, domain=domain)
    return web.json_response({"zone": zone, "domain": domain, "retried": count})


async def drop_bulk(request: web.Request) -> web.Response:
    """DELETE /queued?zone=&domain=: drop every matching pending delivery."""
    zone, domain = await _selector(request)
    count = await _store(request).drop_deliveries(context(request).clock(), zone=zone, domain=domain)
    return web.json_response({"zone": zone, "domain": domain, "dropped": count})
