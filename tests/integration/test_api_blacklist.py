"""GET/DELETE /blacklist and /slowdowns over real HTTP, against the coordinator delivery really uses.

Entries are made the way a delivery worker makes them (bounces.parking.Parking on its own
coordinator, opened from the same configuration), on the local SQLite coordinator and on a real
Redis; the API runs in front of a real SQLite store. Whether a cleared entry still holds back
delivery is asked of a fresh Parking, as a worker that had not looked yet would."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import io
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from yarl import URL

from tests.fixtures.relay import Relay
from zonerelay.api.openapi import spec
from zonerelay.api.server import ApiServer
from zonerelay.bounces.commands import queue_blacklist
from zonerelay.bounces.parking import Parking
from zonerelay.config import Config
from zonerelay.coord import Coordinator, open_coordinator
from zonerelay.ingest.pipeline import IngestPipeline
from zonerelay.store.sqlite import SqliteStore

MX = "mx.example.test"
BLOCKED = "554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org"
TOO_FAST = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail"
TTL = 6 * 3600


@dataclass
class Api:
    base: str
    http: aiohttp.ClientSession
    config: Config
    worker: Coordinator  # a delivery worker's own coordinator, as that process opens it

    async def call(self, method: str, path: str | URL, **kwargs: Any) -> tuple[int, Any]:
        url = path if isinstance(path, URL) else self.base + path
        async with self.http.request(method, url, **kwargs) as resp:
            assert resp.content_type == "application/json"
            return resp.status, await resp.json()

    def parking(self) -> Parking:
        """A worker's view with nothing cached yet."""
        return Parking(self.worker, blacklist_ttl=TTL, pause=30, max_pause=600)


def make_config(tmp_path: Path, **extra: Any) -> Config:
    return Config.model_validate(
        {
            "hostname": "relay.test",
            "queue": {"data_dir": str(tmp_path), "workers": 0},
            "api": {"port": 0},
            **extra,
        }
    )


async def start(config: Config) -> AsyncIterator[Api]:
    store = SqliteStore(config.queue.data_dir / "queue.db")
    await store.open()
    server = ApiServer(IngestPipeline(store, config))  # opens the configured coordinator itself
    await server.start()
    worker = open_coordinator(config, processes=1)
    await worker.open()
    try:
        async with aiohttp.ClientSession() as http:
            yield Api(f"http://127.0.0.1:{server.port}", http, config, worker)
    finally:
        await worker.close()
        await server.stop()
        await store.close()


@pytest.fixture(params=["local", "redis"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    extra: dict[str, Any] = {}
    if request.param == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        extra = {"redis": {"url": url, "prefix": prefix}}
    async for a in start(make_config(tmp_path, **extra)):
        yield a


def _epoch(iso: str) -> int:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


async def test_parked_pairs_are_listed_as_the_cli_lists_them(api: Api) -> None:
    now = time.time()
    parking = api.parking()
    until4 = await parking.park("127.0.0.41", MX, BLOCKED.format(ip="127.0.0.41"), now)
    until6 = await parking.park("2001:db8::41", "MX2.Test.", BLOCKED.format(ip="2001:db8::41"), now + 5)

    status, body = await api.call("GET", "/blacklist")
    assert status == 200
    rows = body["blacklist"]
    assert [(r["key"], r["local_address"], r["mx"]) for r in rows] == [
        ("park:127.0.0.41:mx.example.test", "127.0.0.41", MX),
        ("park:2001:db8::41:mx2.test", "2001:db8::41", "mx2.test"),
    ]
    assert [r["until_epoch"] for r in rows] == pytest.approx([until4, until6], abs=0.001)
    assert [_epoch(r["until"]) for r in rows] == [int(until4), int(until6)]
    assert "spamhaus" in rows[0]["reason"]

    out = io.StringIO()
    assert await asyncio.to_thread(queue_blacklist, api.config, True, None, out) == 0
    assert json.loads(out.getvalue())["blacklist"] == rows  # as `zonerelay queue blacklist --json`


async def test_a_cleared_pair_is_no_longer_avoided_by_delivery(api: Api) -> None:
    now = time.time()
    for ip in ("127.0.0.41", "127.0.0.42"):
        await api.parking().park(ip, MX, BLOCKED.format(ip=ip), now)
    assert await api.parking().parked_sources(MX, time.time()) == {"127.0.0.41", "127.0.0.42"}

    status, body = await api.call("DELETE", "/blacklist/park:127.0.0.41:mx.example.test")
    assert (status, body) == (200, {"cleared": ["park:127.0.0.41:mx.example.test"]})
    assert await api.parking().parked_sources(MX, time.time()) == {"127.0.0.42"}
    _, listing = await api.call("GET", "/blacklist")
    assert [r["local_address"] for r in listing["blacklist"]] == ["127.0.0.42"]

    status, body = await api.call("DELETE", "/blacklist/park:127.0.0.41:mx.example.test")
    assert (status, body["code"]) == (404, "not_found")  # cleared already


async def test_ipv6_keys_work_in_the_path_as_listed_or_percent_encoded(api: Api) -> None:
    now = time.time()
    for ip in ("2001:db8::41", "2001:db8::42"):
        await api.parking().park(ip, MX, BLOCKED.format(ip=ip), now)

    literal = URL(f"{api.base}/blacklist/park:2001:db8::41:mx.example.test", encoded=True)
    status, body = await api.call("DELETE", literal)
    assert (status, body) == (200, {"cleared": ["park:2001:db8::41:mx.example.test"]})
    encoded = URL(f"{api.base}/blacklist/park%3A2001%3Adb8%3A%3A42%3Amx.example.test", encoded=True)
    status, body = await api.call("DELETE", encoded)
    assert (status, body) == (200, {"cleared": ["park:2001:db8::42:mx.example.test"]})
    assert await api.parking().parked_sources(MX, time.time()) == frozenset()


async def test_clearing_every_pair_needs_all_true(api: Api) -> None:
    now = time.time()
    for ip in ("127.0.0.41", "127.0.0.42"):
        await api.parking().park(ip, MX, BLOCKED.format(ip=ip), now)

    for query in ("", "?all=false", "?all=1"):
        status, body = await api.call("DELETE", f"/blacklist{query}")
        assert (status, body["code"]) == (400, "missing_selector"), query
    assert len(await api.parking().parked_sources(MX, time.time())) == 2

    status, body = await api.call("DELETE", "/blacklist?all=true")
    assert status == 200
    assert sorted(body["cleared"]) == ["park:127.0.0.41:mx.example.test", "park:127.0.0.42:mx.example.test"]
    assert await api.parking().parked_sources(MX, time.time()) == frozenset()
    assert (await api.call("GET", "/blacklist"))[1] == {"blacklist": []}
    assert (await api.call("DELETE", "/blacklist?all=true"))[1] == {"cleared": []}


BAD_KEYS = [
    ("not a key", "nonsense", 400, "invalid_key"),
    ("no mx host", "park:127.0.0.41", 400, "invalid_key"),
    ("empty host", "park:127.0.0.41:", 400, "invalid_key"),
    ("a slow-down's key", "slow:default:example.net", 400, "invalid_key"),
    ("nothing parked", "park:127.0.0.9:mx.nowhere.test", 404, "not_found"),
]


@pytest.mark.parametrize(("case", "key", "status", "code"), BAD_KEYS, ids=[c[0] for c in BAD_KEYS])
async def test_bad_or_unknown_blacklist_keys_are_json_errors(
    api: Api, case: str, key: str, status: int, code: str
) -> None:
    await api.parking().park("127.0.0.41", MX, BLOCKED.format(ip="127.0.0.41"), time.time())
    got, body = await api.call("DELETE", f"/blacklist/{key}")
    assert (got, body["code"]) == (status, code)
    assert body["error"]
    assert await api.parking().parked_sources(MX, time.time()) == {"127.0.0.41"}  # left alone


async def test_slowdowns_are_listed_with_strikes_and_can_be_lifted(api: Api) -> None:
    now = time.time()
    parking = api.parking()  # pauses of 30 s, doubling per strike
    await parking.slow_down("default", "example.net", TOO_FAST, now - 40)  # paused until now - 10
    until = await parking.slow_down("default", "example.net", TOO_FAST, now)  # strike 2: paused 60 s
    await parking.slow_down("default", "example.org", TOO_FAST, now)
    await parking.slow_down("bulk", "provider=outlook", TOO_FAST, now)  # an MX rollup of many domains

    status, body = await api.call("GET", "/slowdowns")
    assert status == 200
    rows = {r["key"]: r for r in body["slowdowns"]}
    assert set(rows) == {"slow:default:example.net", "slow:default:example.org", "slow:bulk:provider=outlook"}
    net = rows["slow:default:example.net"]
    assert (net["zone"], net["destination"], net["strikes"], net["paused"], net["reason"]) == (
        "default",
        "example.net",
        2,
        True,
        TOO_FAST,
    )
    assert _epoch(net["paused_until"]) == int(until)
    assert rows["slow:default:example.org"]["strikes"] == 1
    assert rows["slow:bulk:provider=outlook"]["destination"] == "provider=outlook"
    out = io.StringIO()
    assert await asyncio.to_thread(queue_blacklist, api.config, True, None, out) == 0
    cli = json.loads(out.getvalue())["slowed"]  # the same rows as `zonerelay queue blacklist --json`
    assert sorted(cli, key=lambda r: r["key"]) == sorted(body["slowdowns"], key=lambda r: r["key"])
    assert await api.parking().slowed_until("default", "example.net", time.time()) is not None

    status, body = await api.call("DELETE", "/slowdowns/slow:default:example.net")
    assert (status, body) == (200, {"cleared": ["slow:default:example.net"]})
    assert await api.parking().slowdown("default", "example.net", time.time()) is None
    assert await api.parking().slowed_until("bulk", "provider=outlook", time.time()) is not None
    _, listing = await api.call("GET", "/slowdowns")
    assert {r["key"] for r in listing["slowdowns"]} == {
        "slow:default:example.org",
        "slow:bulk:provider=outlook",
    }

    # the strike count starts over: the next "too fast" is a first strike again
    await api.parking().slow_down("default", "example.net", TOO_FAST, time.time())
    _, listing = await api.call("GET", "/slowdowns")
    assert {r["destination"]: r["strikes"] for r in listing["slowdowns"]}["example.net"] == 1

    status, body = await api.call("DELETE", "/slowdowns?all=true")
    assert status == 200 and len(body["cleared"]) == 3
    assert (await api.call("GET", "/slowdowns"))[1] == {"slowdowns": []}


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        ("slow:default", 400, "invalid_key"),
        ("park:127.0.0.41:mx.example.test", 400, "invalid_key"),
        ("slow:default:example.net", 404, "not_found"),
    ],
)
async def test_bad_or_unknown_slowdown_keys_are_json_errors(
    api: Api, key: str, status: int, code: str
) -> None:
    got, body = await api.call("DELETE", f"/slowdowns/{key}")
    assert (got, body["code"]) == (status, code)
    got, body = await api.call("DELETE", "/slowdowns")
    assert (got, body["code"]) == (400, "missing_selector")


async def test_filled_listings_and_answers_match_the_openapi_document(api: Api) -> None:
    """The schemathesis test sees an empty coordinator; here every row kind is present."""
    document = schemathesis.openapi.from_dict(spec(api.config.api.max_size))
    now = time.time()
    await api.parking().park("2001:db8::41", MX, BLOCKED.format(ip="2001:db8::41"), now)
    await api.parking().slow_down("default", "example.net", TOO_FAST, now)
    await api.parking().slow_down("default", "example.org", TOO_FAST, now - 40)  # recovering
    for method, path, template in [
        ("GET", "/blacklist", "/blacklist"),
        ("GET", "/slowdowns", "/slowdowns"),
        ("DELETE", "/slowdowns/slow:default:example.net", "/slowdowns/{key}"),
        ("DELETE", "/blacklist?all=true", "/blacklist"),
        ("DELETE", "/blacklist/park:127.0.0.1:gone.test", "/blacklist/{key}"),
    ]:
        response = await asyncio.to_thread(requests.request, method, api.base + path, timeout=10)
        assert response.json()
        document[template][method].validate_response(response)  # raises on a mismatch


async def test_an_unreachable_redis_is_a_503_not_an_empty_list(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    config = make_config(tmp_path, redis={"url": dead, "timeout": 0.5})
    async for api in start(config):
        for method, path in [("GET", "/blacklist"), ("GET", "/slowdowns"), ("DELETE", "/blacklist?all=true")]:
            status, body = await api.call(method, path)
            assert (status, body["code"]) == (503, "coordination_unavailable"), path
    # and the command line says so, rather than print an empty list
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        assert await asyncio.to_thread(queue_blacklist, config, True, None, out) == 1
    assert out.getvalue() == "" and "cannot read parked pairs and slow-downs" in err.getvalue()


async def test_the_routes_need_the_api_credentials(tmp_path: Path) -> None:
    async for api in start(make_config(tmp_path, api={"port": 0, "auth": "Bearer s3cret"})):
        for method, path in [("GET", "/blacklist"), ("DELETE", "/slowdowns?all=true")]:
            status, body = await api.call(method, path)
            assert (status, body["code"]) == (401, "unauthorized")
        status, body = await api.call("GET", "/blacklist", headers={"Authorization": "Bearer s3cret"})
        assert (status, body) == (200, {"blacklist": []})


async def test_the_running_relay_serves_what_its_workers_parked(relay: Callable[..., Relay]) -> None:
    r = relay({"queue": {"workers": 0}})
    config = Config.model_validate(r.settings)
    worker = open_coordinator(config, processes=1)
    await worker.open()
    try:
        parking = Parking(worker, blacklist_ttl=TTL, pause=30, max_pause=600)
        await parking.park("127.0.0.41", MX, BLOCKED.format(ip="127.0.0.41"), time.time())
        base = f"http://127.0.0.1:{r.api_port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(100):  # the API starts just after the SMTP port the fixture waited for
                try:
                    async with http.get(f"{base}/blacklist") as resp:
                        assert resp.status == 200
                        [row] = (await resp.json())["blacklist"]
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            assert (row["local_address"], row["mx"]) == ("127.0.0.41", MX)
            async with http.delete(f"{base}/blacklist/{row['key']}") as resp:
                assert resp.status == 200
        fresh = Parking(worker, blacklist_ttl=TTL, pause=30, max_pause=600)
        assert await fresh.parked_sources(MX, time.time()) == frozenset()
    finally:
        await worker.close()
    assert r.stop() == 0
