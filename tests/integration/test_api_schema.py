"""Schemathesis against the API's own /openapi.json: generated requests (valid and not) never get
a server error, and answers conform to the documented status codes, content types and schemas.

The API runs in a thread with its own event loop (schemathesis calls it synchronously over
real HTTP), on a real SQLite store; no delivery workers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from zonerelay.api.openapi import spec
from zonerelay.api.server import ApiServer
from zonerelay.config import Config
from zonerelay.ingest.pipeline import IngestPipeline
from zonerelay.store.sqlite import SqliteStore

MAX_SIZE = 1_000_000
schema = schemathesis.openapi.from_dict(spec(MAX_SIZE))


@schemathesis.serializer("message/rfc822")
def _rfc822(ctx: Any, value: Any) -> bytes:
    """Generated /send-raw bodies go out as they are (bytes) or UTF-8 (anything else)."""
    data = getattr(value, "data", value)
    if isinstance(data, bytes):
        return data
    return str(data).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("api-schema")
    config = Config.model_validate(
        {"hostname": "relay.test", "queue": {"data_dir": str(tmp)}, "api": {"port": 0, "max_size": MAX_SIZE}}
    )
    loop = asyncio.new_event_loop()
    started: Future[tuple[ApiServer, SqliteStore]] = Future()
    stop = asyncio.Event()

    async def main() -> None:
        store = SqliteStore(tmp / "queue.db")
        await store.open()
        server = ApiServer(IngestPipeline(store, config))
        await server.start()
        started.set_result((server, store))
        await stop.wait()
        await server.stop()
        await store.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    server, _ = started.result(timeout=10)
    url = f"http://127.0.0.1:{server.port}"
    # a message to find, so /message and /fetch are not only ever 404
    requests.post(f"{url}/send", json={"from": "a@example.com", "to": "b@example.test"}, timeout=10)
    yield url
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def test_the_served_document_is_the_one_tested(base_url: str) -> None:
    assert requests.get(f"{base_url}/openapi.json", timeout=10).json() == spec(MAX_SIZE)


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_documented_answers(case: Any, base_url: str) -> None:
    response = case.call(base_url=base_url, timeout=10)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
