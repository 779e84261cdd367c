"""GET/POST/DELETE /suppressionlist: ZoneMTA's address and domain suppression entries.

Recipients matching an entry are dropped silently at ingest (no delivery row, no bounce) and
counted in zonemta_message_drop; see IngestPipeline's suppression stage.
"""

from __future__ import annotations

import re

from aiohttp import web

from zonerelay.api.compose import valid_mailbox
from zonerelay.api.context import context
from zonerelay.api.errors import ApiError, json_object
from zonerelay.store.base import SuppressionEntry

_DOMAIN = re.compile(r"(?=.{1,253}\Z)[^\s@<>\[\]\"\\,;:.]+(?:\.[^\s@<>\[\]\"\\,;:.]+)*")


def entry_json(entry: SuppressionEntry) -> dict[str, str]:
    if entry.address is not None:
        return {"id": entry.id, "address": entry.address}
    return {"id": entry.id, "domain": entry.domain or ""}


async def list_entries(request: web.Request) -> web.Response:
    store = context(request).store
    return web.json_response({"suppressed": [entry_json(e) for e in await store.list_suppressions()]})


async def add_entry(request: web.Request) -> web.Response:
    data = await json_object(request)
    unknown = set(data) - {"address", "domain"}
    if unknown:
        raise ApiError(400, "invalid_field", f"unknown field {sorted(unknown)[0]!r}")
    address, domain = data.get("address"), data.get("domain")
    if (address is None) == (domain is None):
        raise ApiError(400, "invalid_field", "give exactly one of address or domain")
    store = context(request).store
    if address is not None:
        if not isinstance(address, str) or not valid_mailbox(address.strip()):
            raise ApiError(400, "invalid_address", f"{address!r} is not an email address")
        entry = await store.add_suppression(address=address.strip())
    else:
        if not isinstance(domain, str) or not _DOMAIN.fullmatch(domain.strip().rstrip(".")):
            raise ApiError(400, "invalid_domain", f"{domain!r} is not a domain")
        entry = await store.add_suppression(domain=domain.strip().rstrip("."))
    return web.json_response({"suppressed": entry_json(entry)})


async def delete_entry(request: web.Request) -> web.Response:
    data = await json_object(request)
    entry_id = data.get("id")
    if not isinstance(entry_id, str) or not entry_id:
        raise ApiError(400, "invalid_field", "id (a string) is required")
    store = context(request).store
    if not await store.delete_suppression(entry_id):
        raise ApiError(404, "not_found", f"no suppression entry {entry_id!r}")
    return web.json_response({"deleted": entry_id})
