"""Command-line tools: `zonerelay check-bounce` and `zonerelay queue blacklist`."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, TextIO

from zonerelay.bounces.classify import Classifier, RulesError
from zonerelay.bounces.parking import PARK_PREFIX, split_park_key
from zonerelay.config import Config


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


def queue_blacklist(config: Config, as_json: bool, clear: str | None, stdout: TextIO = sys.stdout) -> int:
    """List the parked (local IP, MX host) pairs, or clear one (KEY, or "all")."""
    from zonerelay.coord import open_coordinator

    async def run() -> int:
        coordinator = open_coordinator(config, processes=1)
        await coordinator.open()
        try:
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
            rows: list[dict[str, Any]] = []
            for entry in sorted(entries, key=lambda e: e.until):
                local, mx = split_park_key(entry.key)
                rows.append({"key": entry.key, "local_address": local, "mx": mx,
                             "until": _iso(entry.until), "reason": entry.reason})  # fmt: skip
            if as_json:
                print(json.dumps({"blacklist": rows}, indent=2), file=stdout)
            else:
                print(f"{'LOCAL ADDRESS':40} {'MX':32} {'UNTIL':20} REASON", file=stdout)
                for row in rows:
                    print(f"{row['local_address']:40} {row['mx']:32} {row['until']:20} {row['reason']}",
                          file=stdout)  # fmt: skip
            return 0
        finally:
            await coordinator.close()

    return asyncio.run(run())
