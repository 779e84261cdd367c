"""GET/DELETE /blacklist and /slowdowns: what delivery is avoiding right now, and lifting it by hand.

A blocklist reply parks the pair (local IP, MX host) under ``park:<ip>:<mx>``; a rate-limit
reply slows the destination down under ``slow:<zone>:<target>`` (bounces/parking.py). Both live
in the coordinator the delivery workers share, so clearing one here is seen by every worker
within a second (the age of their parking snapshot). Rows are built by the same functions as
`zonerelay queue blacklist --json`, and clearing answers as ``--clear`` does: the keys removed.

Keys go in the path exactly as listed: ``DELETE /blacklist/park:2001:db8::1:mx.example.com``.
Colons are legal in a path segment (percent-encoded ``%3A`` works too) and neither an IP address
nor a host name holds a ``/``, so the path form works for IPv6 sources as well.
"""

from __future__ import annotations

from aiohttp import web

from zonerelay.api.context import context
from zonerelay.api.errors import ApiError
from zonerelay.bounces.commands import blacklist_row, slowed_rows
from zonerelay.bounces.parking import PARK_PREFIX, SLOW_PREFIX, split_park_key, split_slow_key
from zonerelay.coord import Coordinator, FallbackCoordinator, Parked


def _coordinator(request: web.Request) -> Coordinator:
    """The shared coordinator itself: a fallback's process-local copy would answer "nothing
    parked" while Redis is away, so the API asks Redis and answers 503 when it cannot."""
    coordinator = context(request).coordinator
    return coordinator.primary if isinstance(coordinator, FallbackCoordinator) else coordinator


def _park_key(request: web.Request) -> str:
    key = request.match_info["key"]
    if not key.startswith(PARK_PREFIX) or not all(split_park_key(key)):
        raise ApiError(400, "invalid_key", f"{key!r} is not a parked pair's key (park:<local ip>:<mx host>)")
    return key


def _slow_key(request: web.Request) -> str:
    key = request.match_info["key"]
    if not key.startswith(SLOW_PREFIX) or not all(split_slow_key(key)):
        raise ApiError(400, "invalid_key", f"{key!r} is not a slow-down's key (slow:<zone>:<destination>)")
    return key


def _all(request: web.Request) -> None:
    if request.query.get("all", "").lower() != "true":
        raise ApiError(400, "missing_selector", "give the key in the path, or ?all=true to clear every entry")


async def _entries(request: web.Request, prefix: str) -> list[Parked]:
    entries = await _coordinator(request).parked(context(request).clock(), prefix)
    return sorted(entries, key=lambda e: (e.until, e.key))


async def _clear(request: web.Request, keys: list[str]) -> web.Response:
    """Unpark ``keys``; the answer leaves out those another caller removed meanwhile."""
    coordinator = _coordinator(request)
    return web.json_response({"cleared": [key for key in keys if await coordinator.unpark(key)]})


async def _clear_one(request: web.Request, key: str, what: str) -> web.Response:
    """404 unless ``key`` is in force now (an expired entry may linger until swept)."""
    if not any(e.key == key for e in await _entries(request, key)):
        raise ApiError(404, "not_found", f"no {what} {key!r}")
    return await _clear(request, [key])


async def list_blacklist(request: web.Request) -> web.Response:
    """GET /blacklist: parked pairs, soonest to end first (the rows of `queue blacklist --json`)."""
    return web.json_response({"blacklist": [blacklist_row(e) for e in await _entries(request, PARK_PREFIX)]})


async def clear_blacklist_entry(request: web.Request) -> web.Response:
    """DELETE /blacklist/{key}: the local IP may be used towards that MX again at once."""
    return await _clear_one(request, _park_key(request), "parked pair")


async def clear_blacklist(request: web.Request) -> web.Response:
    """DELETE /blacklist?all=true: every parked pair."""
    _all(request)
    return await _clear(request, [e.key for e in await _entries(request, PARK_PREFIX)])


async def list_slowdowns(request: web.Request) -> web.Response:
    """GET /slowdowns: destinations paused or slowed after a rate-limit reply (the `slowed`
    rows of `queue blacklist --json`: strikes, current limits, when full speed returns)."""
    ctx = context(request)
    rows = slowed_rows(ctx.pipeline.config, await _entries(request, SLOW_PREFIX), ctx.clock())
    return web.json_response({"slowdowns": rows})


async def clear_slowdown(request: web.Request) -> web.Response:
    """DELETE /slowdowns/{key}: full speed again at once, and the strike count starts over."""
    return await _clear_one(request, _slow_key(request), "slow-down")


async def clear_slowdowns(request: web.Request) -> web.Response:
    """DELETE /slowdowns?all=true: every slow-down, and every remembered strike."""
    _all(request)
    return await _clear(request, [e.key for e in await _entries(request, SLOW_PREFIX)])
