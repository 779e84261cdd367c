"""Cluster-wide coordination on Redis (redis-py's asyncio client).

- Slots: one sorted set per key, members = holders, scores = expiry. A Lua script drops
  expired holders and adds the new one only if fewer than ``limit`` remain, atomically.
- Rates: a sliding-window log, one sorted set per key scored by event time; the Lua script
  drops events older than the window and records a new one only if fewer than ``count``
  remain (exact "at most count per period", at the cost of one entry per event in the window).
- Parking: a sorted set of parked keys scored by their end, reasons in a hash.
- Heartbeats: a sorted set of instance ids scored by expiry, their info in a hash.

Every comparison uses the caller's ``now`` (instances keep their clocks in sync with NTP, as
leases in the store already require), never the Redis server's clock, so the semantics are
the same as the local coordinator's. Redis TTLs on the keys are only for tidiness: a key
nobody touches for longer than its window disappears. Nothing here needs Redis persistence:
after a Redis restart, slots and rate windows start empty, which errs by at most one window.

Calls time out after ``timeout`` seconds without retrying and raise CoordinationUnavailable,
so a dead Redis costs a caller about one timeout, after which the FallbackCoordinator takes
over with local limits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import ResponseError as RedisResponseError

from zonerelay.coord.base import CoordinationUnavailable, Coordinator, InstanceInfo, Parked

__all__ = ["RedisCoordinator"]

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local ttl = tonumber(ARGV[5])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""

_RENEW = """
for i = 1, #KEYS do
  local score = redis.call('ZSCORE', KEYS[i], ARGV[i + 3])
  if score and tonumber(score) > tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[i], ARGV[1], ARGV[i + 3])
    if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
  end
end
return 0
"""

_RATE = """
local count = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local n = redis.call('ZCARD', KEYS[1])
if n < count then
  local id = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[3] .. ':' .. id)
  local ttl = math.ceil(period * 1000) + 1000
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  return '0'
end
local oldest = redis.call('ZRANGE', KEYS[1], n - count, n - count, 'WITHSCORES')
return tostring(tonumber(oldest[2]) + period - now)
"""

_PARKED = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, key in ipairs(gone) do redis.call('HDEL', KEYS[2], key) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'WITHSCORES')
local out = {}
for i = 1, #live, 2 do
  local key = live[i]
  if string.sub(key, 1, #ARGV[2]) == ARGV[2] then
    table.insert(out, key)
    table.insert(out, live[i + 1])
    table.insert(out, redis.call('HGET', KEYS[2], key) or '')
  end
end
return out
"""

_INSTANCES = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local dead = redis.call('HKEYS', KEYS[2])
for _, id in ipairs(dead) do
  if not redis.call('ZSCORE', KEYS[1], id) then redis.call('HDEL', KEYS[2], id) end
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
local out = {}
for _, id in ipairs(live) do
  table.insert(out, id)
  table.insert(out, redis.call('HGET', KEYS[2], id) or '{}')
end
return out
"""

#: Dead instances stay in the index this long (seconds) before they are tidied away.
_INSTANCE_MEMORY = 86400.0


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisCoordinator(Coordinator):
    """Coordinator shared by every instance of a cluster through one Redis database."""

    def __init__(self, url: str, *, prefix: str = "zonerelay:", timeout: float = 1.0) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}

    def _k(self, kind: str, key: str = "") -> str:
        return f"{self.prefix}{kind}:{key}" if key else f"{self.prefix}{kind}"

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise CoordinationUnavailable("redis coordinator is not open")
        return self._client

    async def open(self) -> None:
        if self._client is not None:
            return
        self._client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            decode_responses=True,
        )
        for name, source in (
            ("acquire", _ACQUIRE),
            ("renew", _RENEW),
            ("rate", _RATE),
            ("parked", _PARKED),
            ("instances", _INSTANCES),
        ):
            self._scripts[name] = self._client.register_script(source)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = self._scripts.get(name)
        if script is None:
            raise CoordinationUnavailable("redis coordinator is not open")
        try:
            return await script(keys=keys, args=args)
        except RedisResponseError:
            raise
        except (RedisError, OSError) as exc:
            raise CoordinationUnavailable(f"redis {self.url.rpartition('@')[2]}: {exc}") from exc

    async def _cmd(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except RedisResponseError:
            raise
        except (RedisError, OSError) as exc:
            raise CoordinationUnavailable(f"redis {self.url.rpartition('@')[2]}: {exc}") from exc

    # -- slots ----------------------------------------------------------------------------
    async def acquire_slot(self, key: str, limit: int, holder: str, ttl: float, now: float) -> bool:
        result = await self._run(
            "acquire", [self._k("slot", key)], [limit, holder, repr(now + ttl), repr(now), _ms(ttl)]
        )
        return bool(int(result))

    async def release_slot(self, key: str, holder: str) -> None:
        await self._cmd(self.client.zrem(self._k("slot", key), holder))

    async def renew_slots(self, keys_holders: list[tuple[str, str]], ttl: float, now: float) -> None:
        if not keys_holders:
            return
        keys = [self._k("slot", k) for k, _ in keys_holders]
        await self._run("renew", keys, [repr(now + ttl), repr(now), _ms(ttl)] + [h for _, h in keys_holders])

    async def slot_count(self, key: str, now: float) -> int:
        return int(await self._cmd(self.client.zcount(self._k("slot", key), f"({now!r}", "+inf")))

    # -- rates ----------------------------------------------------------------------------
    async def rate_take(self, key: str, count: int, period: float, now: float) -> float:
        result = await self._run(
            "rate", [self._k("rate", key), self._k("rateseq", key)], [count, repr(period), repr(now)]
        )
        return 0.0 if result == "0" else max(float(result), 1e-6)

    # -- parking --------------------------------------------------------------------------
    async def park(self, key: str, until: float, reason: str) -> None:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.zadd(self._k("parked"), {key: until})
                pipe.hset(self._k("parkreason"), key, reason)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CoordinationUnavailable(f"redis: {exc}") from exc

    async def unpark(self, key: str) -> bool:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.zrem(self._k("parked"), key)
                pipe.hdel(self._k("parkreason"), key)
                removed, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CoordinationUnavailable(f"redis: {exc}") from exc
        return bool(removed)

    async def parked(self, now: float, prefix: str = "") -> list[Parked]:
        flat = await self._run("parked", [self._k("parked"), self._k("parkreason")], [repr(now), prefix])
        out = [Parked(flat[i], float(flat[i + 1]), flat[i + 2]) for i in range(0, len(flat), 3)]
        return sorted(out, key=lambda p: p.key)

    # -- instances ------------------------------------------------------------------------
    async def heartbeat(self, instance_id: str, info: dict[str, object], ttl: float, now: float) -> None:
        doc = json.dumps({"last_seen": now, "info": info})
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.zadd(self._k("instances"), {instance_id: now + ttl})
                pipe.hset(self._k("instanceinfo"), instance_id, doc)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CoordinationUnavailable(f"redis: {exc}") from exc

    async def instances(self, now: float) -> list[InstanceInfo]:
        flat = await self._run(
            "instances",
            [self._k("instances"), self._k("instanceinfo")],
            [repr(now), repr(now - _INSTANCE_MEMORY)],
        )
        out = []
        for i in range(0, len(flat), 2):
            doc = json.loads(flat[i + 1])
            out.append(InstanceInfo(flat[i], float(doc.get("last_seen", 0.0)), dict(doc.get("info", {}))))
        return sorted(out, key=lambda x: x.instance_id)
