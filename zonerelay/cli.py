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
from zonerelay.store.base import Delivery, DeliveryStatus, QueueStore, StoreError


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
        try:
            await store.open()
        except StoreError as exc:
            print(f"zonerelay: cannot open the queue store: {exc}", file=sys.stderr)
            return 1
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from zonerelay.api.multiproc import prepare

    prepare(config.queue.data_dir)  # before anything imports prometheus_client (zonerelay.metrics)
    from zonerelay.runloop import run
    from zonerelay.service import serve

    setup_logging(config.log)
    try:
        run(serve(config))
    except StoreError as exc:  # e.g. an unknown schema: the message says to migrate
        print(f"zonerelay: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_store_migrate(config: Config, args: argparse.Namespace) -> int:
    from zonerelay.store.migrate import migrate

    try:
        print(asyncio.run(migrate(config)))
    except StoreError as exc:
        print(f"zonerelay: migration failed: {exc}", file=sys.stderr)
        return 1
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
        planned = meta.get("dkimSignatures") or []
        signatures = [f"{x['domain']}/{x['selector']} ({x['algorithm']})" for x in planned]
        print(f"  dkim signatures: {', '.join(signatures) or 'none'}")
        for d in deliveries:
            line = f"  {d.seq} <{d.recipient}> {d.status.value} zone={d.zone} attempts={d.attempts}"
            if d.status is DeliveryStatus.DEFERRED:
                line += f" next={_iso(d.next_attempt)}"
            print(line)
            if d.last_response:
                print(f"      last response: {d.last_response}")
        for e in events:
            category = f" [{e.details['category']}]" if e.details.get("category") else ""
            print(f"  {_iso(e.time)} {e.seq} {e.status}{category}: {e.response}")
        return 0

    return _with_store(config, action)


def cmd_queue_stats(config: Config, args: argparse.Namespace) -> int:
    async def action(store: QueueStore) -> int:
        stats = await store.stats()
        from zonerelay.cluster import cluster_state

        instances = await cluster_state(config, store)
        data = {
            "queued": stats.queued,
            "deferred": stats.deferred,
            "delivered": stats.delivered,
            "bounced": stats.bounced,
            "messages": stats.messages,
            "leased": stats.leased,
            "zones": stats.by_zone,
            "instances": instances,
        }
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            for key in ("queued", "deferred", "delivered", "bounced", "messages", "leased"):
                print(f"{key:10} {data[key]}")
            for zone, counts in stats.by_zone.items():
                print(f"zone {zone}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
            for inst in instances:
                seen = "never" if inst["last_seen"] is None else f"{inst['age']:.1f}s ago"
                state, leases = inst["state"], inst["leases"]
                print(f"instance {inst['id']}: {state}, last heartbeat {seen}, leases {leases}")
        return 0

    return _with_store(config, action)


def cmd_dkim_keygen(config: Config, args: argparse.Namespace) -> int:
    from zonerelay.dkim.commands import keygen, zone_file_line

    try:
        path, name, value = keygen(args.domain, args.selector, args.algorithm, args.bits, args.keys_dir)
    except (OSError, ValueError) as exc:
        print(f"zonerelay: cannot write the key: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"name": name, "value": value, "path": str(path)}))
    else:
        print(f"# private key written to {path} (mode 0600)\n# publish this DNS record:")
        print(zone_file_line(name, value))
    return 0


def cmd_dkim_check(config: Config, args: argparse.Namespace) -> int:
    from zonerelay.dkim.commands import check_keys

    results = asyncio.run(check_keys(config))
    if args.json:
        rows = [{"domain": r.key.domain, "selector": r.key.selector, "algorithm": r.key.algorithm,
                 "name": r.name, "status": r.status, "detail": r.detail} for r in results]  # fmt: skip
        print(json.dumps({"keys": rows}, indent=2))
    for r in results if not args.json else []:
        print(f"{r.status:8} {r.name} ({r.key.algorithm}, {r.key.path}): {r.detail}")
    if not results:
        print("no DKIM keys are configured", file=sys.stderr)
    return 0 if all(r.status == "ok" for r in results) else 1


def cmd_check_bounce(config: Config, args: argparse.Namespace) -> int:
    from zonerelay.bounces.commands import check_bounce

    return check_bounce(config, args.json)


def cmd_queue_blacklist(config: Config, args: argparse.Namespace) -> int:
    from zonerelay.bounces.commands import queue_blacklist

    return queue_blacklist(config, args.json, args.clear)


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
    qblack = with_config(queue_sub.add_parser("blacklist", help="parked (local IP, MX host) pairs"))
    qblack.add_argument("--json", action="store_true")
    qblack.add_argument("--clear", metavar="KEY", help='unpark one pair (its key) or "all"')
    qblack.set_defaults(func=cmd_queue_blacklist)

    store = sub.add_parser("store", help="the queue store")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    migrate = with_config(store_sub.add_parser("migrate", help="create or upgrade the store's schema"))
    migrate.set_defaults(func=cmd_store_migrate)

    bounce = with_config(sub.add_parser("check-bounce", help="classify an SMTP reply read from stdin"))
    bounce.add_argument("--json", action="store_true")
    bounce.set_defaults(func=cmd_check_bounce)

    dkim = sub.add_parser("dkim", help="DKIM keys")
    dkim_sub = dkim.add_subparsers(dest="dkim_command", required=True)
    keygen = with_config(dkim_sub.add_parser("keygen", help="make a key and print its DNS record"))
    keygen.add_argument("domain")
    keygen.add_argument("selector")
    keygen.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument("--keys-dir", help="write DIR/DOMAIN/SELECTOR.pem (the keys_dir layout)")
    keygen.add_argument("--json", action="store_true")
    keygen.set_defaults(func=cmd_dkim_keygen)
    dcheck = with_config(dkim_sub.add_parser("check", help="check each key's DNS record"))
    dcheck.add_argument("--json", action="store_true")
    dcheck.set_defaults(func=cmd_dkim_check)
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
