"""Command-line tools: `zonerelay check-bounce` and `zonerelay queue blacklist`."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from typing import Any, TextIO

from zonerelay.bounces.classify import Classifier, RulesError
from zonerelay.bounces.parking import PARK_PREFIX, SLOW_PREFIX, read_slowdown, split_park_key, split_slow_key
from zonerelay.config import Config
from zonerelay.coord.base import CoordinationUnavailable, Coordinator, Parked
from zonerelay.zones.limits import base_connections

_STRIKES_UNTIL = re.compile(r"^x\d+ until=\S+ ?")


def check_bounce(
    config: Config, as_json: bool, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> int:
    """Read an SMTP reply (one or several lines) on stdin; print its classification."""
    data = stdin.read().strip("\r\n")
    try:
        classifier = Classifier.from_file(config.bounces.rules_file or None)
    except RulesError as exc:
        print(f"zonerelay: {exc}", file=sys.stderr)
        return 2
    result = classifier.classify(data)
    if as_json:
        print(json.dumps(result.as_dict()), file=stdout)
        return 0
    print(f"data : {data}", file=stdout)
    values = result.as_dict()
    for key in ("action", "message", "category", "code", "status"):  # the reference's order
        print(f"{key} : {'' if values[key] is None else values[key]}", file=stdout)
    return 0


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def until_fields(ts: float) -> dict[str, Any]:
    """An end time for people (ISO-8601 UTC) and for scripts (unix seconds)."""
    return {"until": _iso(ts), "until_epoch": round(ts, 3)}


def blacklist_row(entry: Parked) -> dict[str, Any]:
    """One parked (local IP, MX host) pair, as `queue blacklist --json` and GET /blacklist show it."""
    local, mx = split_park_key(entry.key)
    return {"key": entry.key, "local_address": local, "mx": mx, **until_fields(entry.until),
            "reason": entry.reason}  # fmt: skip


def slowed_rows(config: Config, entries: list[Parked], now: float) -> list[dict[str, Any]]:
    """Destinations paused or slowed after a rate-limit reply, with their current limits."""
    bounces, rows = config.bounces, []
    for entry in entries:
        zone, target = split_slow_key(entry.key)
        base = base_connections(config, zone, target)
        s = read_slowdown(entry, base=base, now=now, recovery=bounces.rate_limit_recovery,
                          gap=bounces.rate_limit_gap)  # fmt: skip
        if s is None:
            continue
        rows.append({"key": entry.key, "zone": zone, "destination": target, "strikes": s.strikes,
                     "paused": s.paused(now), "paused_until": _iso(s.until),
                     "connections": s.step.cap if s.step else base, "full_connections": base,
                     "gap": s.step.gap if s.step else 0.0,
                     "recovers": _iso(max(s.until, s.recovered_at(bounces.rate_limit_recovery))),
                     "reason": _STRIKES_UNTIL.sub("", entry.reason)})  # fmt: skip
    return rows


def queue_blacklist(config: Config, as_json: bool, clear: str | None, stdout: TextIO = sys.stdout) -> int:
    """List the parked (local IP, MX host) pairs and the slowed destinations, or clear one
    (KEY, or "all" parked pairs)."""
    from zonerelay.coord import FallbackCoordinator, open_coordinator

    async def run() -> int:
        opened = open_coordinator(config, processes=1)
        # the shared coordinator itself: a fallback's process-local copy would list nothing
        # while Redis is away, as if nothing were parked
        coordinator = opened.primary if isinstance(opened, FallbackCoordinator) else opened
        try:
            await coordinator.open()
            return await answer(coordinator)
        except CoordinationUnavailable as exc:
            print(f"zonerelay: cannot read parked pairs and slow-downs: {exc}", file=sys.stderr)
            return 1
        finally:
            await coordinator.close()

    async def answer(coordinator: Coordinator) -> int:
        entries = await coordinator.parked(time.time(), PARK_PREFIX)
        if clear is not None:
            keys = [e.key for e in entries] if clear == "all" else [clear]
            cleared = [k for k in keys if await coordinator.unpark(k)]
            if as_json:
                print(json.dumps({"cleared": cleared}), file=stdout)
            else:
                for key in cleared:
                    print(f"cleared {key}", file=stdout)
            return 0 if cleared or clear == "all" else 1
        rows = [blacklist_row(entry) for entry in sorted(entries, key=lambda e: e.until)]
        now = time.time()
        slowed = slowed_rows(config, await coordinator.parked(now, SLOW_PREFIX), now)
        if as_json:
            print(json.dumps({"blacklist": rows, "slowed": slowed}, indent=2), file=stdout)
        else:
            print(f"{'LOCAL ADDRESS':40} {'MX':32} {'UNTIL':20} REASON", file=stdout)
            for row in rows:
                print(f"{row['local_address']:40} {row['mx']:32} {row['until']:20} {row['reason']}",
                      file=stdout)  # fmt: skip
            if slowed:
                print(f"\n{'SLOWED (rate limit)':40} {'CONNECTIONS':12} {'GAP':8} {'PAUSED UNTIL':20} "
                      f"{'FULL SPEED AT':20} REASON", file=stdout)  # fmt: skip
            for s in slowed:
                cap = "paused" if s["paused"] else f"{s['connections']}/{s['full_connections']}"
                where = f"{s['zone']}/{s['destination']}"
                print(f"{where:40} {cap:12} {s['gap']:<8g} {s['paused_until']:20} {s['recovers']:20} "
                      f"{s['reason']}", file=stdout)  # fmt: skip
        return 0

    return asyncio.run(run())
