"""RedisCoordinator against a real Redis, and the fallback when Redis is away."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.coord.contract import T0, CoordinatorContract
from zonerelay.config import Config
from zonerelay.coord import CoordinationUnavailable, FallbackCoordinator, open_coordinator
from zonerelay.coord.redis import RedisCoordinator


async def _drop_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


class TestRedisCoordinator(CoordinatorContract):
    @pytest.fixture
    async def coord(self, redis_url: str, redis_prefix: str) -> AsyncIterator[RedisCoordinator]:
        c = RedisCoordinator(redis_url, prefix=redis_prefix)
        await c.open()
        yield c
        await c.close()
        await _drop_prefix(redis_url, redis_prefix)


def _dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


async def test_unreachable_redis_fails_fast() -> None:
    c = RedisCoordinator(_dead_url(), timeout=0.5)
    await c.open()
    start = time.monotonic()
    with pytest.raises(CoordinationUnavailable):
        await c.acquire_slot("k", 1, "h", 10, T0)
    with pytest.raises(CoordinationUnavailable):
        await c.instances(T0)
    assert time.monotonic() - start < 5
    await c.close()


async def test_two_coordinators_share_one_cap(redis_url: str, redis_prefix: str) -> None:
    a = RedisCoordinator(redis_url, prefix=redis_prefix)
    b = RedisCoordinator(redis_url, prefix=redis_prefix)
    await a.open()
    await b.open()
    try:
        got = [await (a if i % 2 else b).acquire_slot("zone:default", 10, f"h{i}", 30, T0) for i in range(30)]
        assert sum(got) == 10  # 10 in all, not 10 per instance
        assert await a.rate_take("rate:x", 1, 60, T0) == 0.0
        assert await b.rate_take("rate:x", 1, 60, T0) > 0
    finally:
        await a.close()
        await b.close()
        await _drop_prefix(redis_url, redis_prefix)


async def test_fallback_uses_conservative_local_limits_and_comes_back(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    primary = RedisCoordinator(redis_url, prefix=redis_prefix)
    coord = FallbackCoordinator(primary, processes=1, retry_interval=0.0)
    await coord.open()
    try:
        await coord.heartbeat("a", {}, 30, time.time())
        await coord.heartbeat("b", {}, 30, time.time())
        assert len(await coord.instances(time.time())) == 2
        assert await coord.acquire_slot("k", 10, "shared", 30, T0)
        # Redis goes away: point the client at a dead port
        await primary.close()
        primary.url = _dead_url()
        primary.timeout = 0.3
        await primary.open()
        with caplog.at_level(logging.ERROR, logger="zonerelay.coord"):
            got = [await coord.acquire_slot("k", 10, f"h{i}", 30, T0) for i in range(10)]
            await coord.rate_take("r", 10, 60, T0)
        assert sum(got) == 5  # 10 shared by the 2 instances seen last
        assert coord.degraded
        assert sum("COORDINATION UNAVAILABLE" in r.message for r in caplog.records) == 1  # once, loudly
        # Redis is back: the shared state (one slot held) counts again
        await primary.close()
        primary.url = redis_url
        await primary.open()
        assert await coord.slot_count("k", T0) == 1
        assert not coord.degraded
    finally:
        await coord.close()
        await _drop_prefix(redis_url, redis_prefix)


def test_open_coordinator_with_redis_url(redis_url: str) -> None:
    config = Config.model_validate({"redis": {"url": redis_url.replace("redis://", "rediss://")}})
    coord = open_coordinator(config)
    assert isinstance(coord, FallbackCoordinator)
    assert isinstance(coord.primary, RedisCoordinator)
    assert coord.primary.url.startswith("rediss://")
