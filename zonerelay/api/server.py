"""The aiohttp application and the server the supervisor starts and stops."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web

from zonerelay.api import parking, queue, submit, suppression
from zonerelay.api.auth import auth_middleware
from zonerelay.api.context import CONTEXT, Context
from zonerelay.api.errors import Middleware, error_middleware
from zonerelay.api.openapi import spec
from zonerelay.api.prom import metrics_view
from zonerelay.config.model import ApiConfig
from zonerelay.coord import Coordinator, open_coordinator
from zonerelay.ingest.pipeline import IngestPipeline

log = logging.getLogger("zonerelay.api")


def build_app(
    pipeline: IngestPipeline,
    api: ApiConfig | None = None,
    clock: Callable[[], float] = time.time,
    coordinator: Coordinator | None = None,
) -> web.Application:
    """The API over ``pipeline`` (and its store); ``api`` defaults to the pipeline's config.

    ``coordinator`` is the caller's, opened and closed by it (the supervisor shares its own);
    without one the app opens the configured coordinator at start-up and closes it at clean-up.
    """
    api = api or pipeline.config.api
    middlewares: list[Middleware] = [error_middleware]
    auth = auth_middleware(api.auth)
    if auth is not None:
        middlewares.insert(0, auth)
    # JSON bodies (base64) may be a third larger than the message; /send-raw streams instead
    app = web.Application(middlewares=middlewares, client_max_size=api.max_size * 4 // 3 + 65536)
    if coordinator is None:
        coordinator = owned = open_coordinator(pipeline.config, processes=1)

        async def open_owned(app: web.Application) -> None:
            await owned.open()

        async def close_owned(app: web.Application) -> None:
            await owned.close()

        app.on_startup.append(open_owned)
        app.on_cleanup.append(close_owned)
    zones = frozenset(pipeline.config.zones)
    app[CONTEXT] = Context(pipeline, pipeline.store, zones, api.max_size, clock, coordinator)
    document = spec(api.max_size)

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_post("/send", submit.send_json)
    app.router.add_post("/send-raw", submit.send_raw)
    app.router.add_get("/counter/zone/", queue.counter_all)
    app.router.add_get("/counter/zone/{zone}", queue.counter_zone)
    app.router.add_post("/queued/retry", queue.retry_bulk)
    app.router.add_delete("/queued", queue.drop_bulk)
    app.router.add_get("/queued/{kind:active|deferred}/{zone}", queue.queued)
    app.router.add_get("/message/{id}", queue.message)
    app.router.add_delete("/message/{id}", queue.drop_message)
    app.router.add_post("/message/{id}/retry", queue.retry_message)
    app.router.add_get("/fetch/{id}", queue.fetch)
    app.router.add_get("/suppressionlist", suppression.list_entries)
    app.router.add_post("/suppressionlist", suppression.add_entry)
    app.router.add_delete("/suppressionlist", suppression.delete_entry)
    app.router.add_get("/blacklist", parking.list_blacklist)
    app.router.add_delete("/blacklist", parking.clear_blacklist)
    app.router.add_delete("/blacklist/{key}", parking.clear_blacklist_entry)
    app.router.add_get("/slowdowns", parking.list_slowdowns)
    app.router.add_delete("/slowdowns", parking.clear_slowdowns)
    app.router.add_delete("/slowdowns/{key}", parking.clear_slowdown)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/openapi.json", openapi)
    return app


class ApiServer:
    """Listens on ``[api] host:port``; started and stopped by the supervisor."""

    def __init__(
        self, pipeline: IngestPipeline, api: ApiConfig | None = None, coordinator: Coordinator | None = None
    ) -> None:
        self.api = api or pipeline.config.api
        self.app = build_app(pipeline, self.api, coordinator=coordinator)
        self._runner: web.AppRunner | None = None
        self.port = self.api.port

    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, self.api.host, self.api.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if runner.addresses:
            self.port = int(runner.addresses[0][1])
        log.info("HTTP API listening on %s:%d", self.api.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
