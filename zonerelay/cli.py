"""The `zonerelay` command: serve, config check, queue list/show/stats.

Every subcommand takes `-c FILE` after its name, e.g. `zonerelay queue list --json -c relay.toml`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from zonerelay.config import Config, ConfigError, load_config
from zonerelay.config.render import to_toml
from zonerelay.logs import setup_logging
from zonerelay.store import open_store
from zonerelay.store.base import Delivery, DeliveryStatus, QueueStore


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def delivery_json(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "seq": d.seq,
        "recipient": d.recipient,
        "domain": d.domain,
        "zone": d.zone,
        "status": d.status.value,
        "attempts": d.attempts,
        "created": _iso(d.created),
        "next_attempt": _iso(d.next_attempt) if not d.status.is_final else None,
        "last_attempt": _iso(d.last_attempt),
        "last_response": d.last_response,
        "leased_by": d.lease_owner if d.lease_until and d.lease_until > time.time() else None,
    }


def _with_store(config: Config, action: Callable[[QueueStore], Coroutine[Any, Any, int]]) -> int:
    async def run() -> int:
        store = open_store(config)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from zonerelay.runloop import run
    from zonerelay.service import serve

    setup_logging(config.log)
    run(serve(config))
    return 0


def cmd_config_check(config: Config, args: argparse.Namespace) -> int:
    data = config.model_dump(mode="json")
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print("# configuration is valid; effective values:")
        print(to_toml(data), end="")
    return 0


def cmd_queue_list(config: Config, args: argparse.Namespace) -> int:
    statuses = tuple(DeliveryStatus(s) for s in args.status) if args.status else None

    async def action(store: QueueStore) -> int:
        rows = await store.list_deliveries(statuses=statuses, zone=args.zone, limit=args.limit)
        if args.json:
            print(json.dumps({"list": [delivery_json(d) for d in rows]}, indent=2))
            return 0
        print(f"{'ID':18} {'SEQ':4} {'STATUS':9} {'ZONE':10} {'ATT':>3} {'NEXT ATTEMPT':20} RECIPIENT")
        for d in rows:
            nxt = _iso(d.next_attempt) if not d.status.is_final else "-"
            print(
                f"{d.id:18} {d.seq:4} {d.status.value:9} {d.zone:10} {d.attempts:>3} {nxt:20} {d.recipient}"
            )
        return 0

    return _with_store(config, action)


def cmd_queue_show(config: Config, args: argparse.Namespace) -> int:
    async def action(store: QueueStore) -> int:
        message = await store.get_message(args.id)
        if message is None:
            print(f"no message with id {args.id}", file=sys.stderr)
            return 1
        deliveries = await store.get_deliveries(args.id)
        events = await store.get_events(args.id)
        data = {
            "meta": message.meta,
            "messages": [delivery_json(d) for d in deliveries],
            "events": [
                {"seq": e.seq, "time": _iso(e.time), "status": e.status, "response": e.response, **e.details}
                for e in events
            ],
        }
        if args.json:
            print(json.dumps(data, indent=2, ensure_ascii=False))
            return 0
        print(
            f"Message {message.id}  from <{message.sender}>  size {len(message.headers) + message.body_size}"
        )
        meta = message.meta
        print(f"  queued {_iso(message.created)} via {meta.get('interface')} from {meta.get('origin')}")
        for d in deliveries:
            line = f"  {d.seq} <{d.recipient}> {d.status.value} zone={d.zone} attempts={d.attempts}"
            if d.status is DeliveryStatus.DEFERRED:
                line += f" next={_iso(d.next_attempt)}"
            print(line)
            if d.last_response:
                print(f"      last response: {d.last_response}")
        for e in events:
            print(f"  {_iso(e.time)} {e.seq} {e.status}: {e.response}")
        return 0

    return _with_store(config, action)


def cmd_queue_stats(config: Config, args: argparse.Namespace) -> int:
    async def action(store: QueueStore) -> int:
        stats = await store.stats()
        data = {
            "queued": stats.queued,
            "deferred": stats.deferred,
            "delivered": stats.delivered,
            "bounced": stats.bounced,
            "messages": stats.messages,
            "leased": stats.leased,
            "zones": stats.by_zone,
        }
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            for key in ("queued", "deferred", "delivered", "bounced", "messages", "leased"):
                print(f"{key:10} {data[key]}")
            for zone, counts in stats.by_zone.items():
                print(f"zone {zone}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        return 0

    return _with_store(config, action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zonerelay", description="Outbound SMTP relay with sending zones")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", help="TOML configuration file (default: built-in defaults)")
        return p

    serve = with_config(sub.add_parser("serve", help="run the relay"))
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = with_config(config_sub.add_parser("check", help="validate and print the effective configuration"))
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_config_check)

    queue = sub.add_parser("queue", help="inspect the queue")
    queue_sub = queue.add_subparsers(dest="queue_command", required=True)
    qlist = with_config(queue_sub.add_parser("list", help="list deliveries"))
    qlist.add_argument("--json", action="store_true")
    qlist.add_argument("--status", action="append", choices=[s.value for s in DeliveryStatus])
    qlist.add_argument("--zone")
    qlist.add_argument("--limit", type=int, default=1000)
    qlist.set_defaults(func=cmd_queue_list)
    show = with_config(queue_sub.add_parser("show", help="show one message and its deliveries"))
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_queue_show)
    stats = with_config(queue_sub.add_parser("stats", help="queue counters"))
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_queue_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"zonerelay: configuration error: {exc}", file=sys.stderr)
        return 2
    result: int = args.func(config, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
