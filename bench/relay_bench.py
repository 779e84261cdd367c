"""Quick benchmarks of zonerelay on loopback (not tests; figures depend on the machine).

    python bench/relay_bench.py ingest  [--messages 5000 --size 10240 --sessions 20]
    python bench/relay_bench.py e2e     [--messages 10000 --size 10240 --sessions 20 --workers 2]
    python bench/relay_bench.py big     [--gib 1]

ingest: Postfix's smtp-source → zonerelay (workers = 0: accept and hold), msg/s until the last 250.
e2e:    smtp-source → zonerelay → Postfix's smtp-sink, msg/s until the queue is empty.
big:    one message of N GiB streamed over SMTP; time and the relay's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.dns import DnsServer  # noqa: E402
from zonerelay.config.render import to_toml  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_relay(workdir: Path, settings: dict[str, Any]) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    config = {
        "hostname": "relay.bench",
        "queue": {"data_dir": str(workdir / "data"), "instance_id": "bench"},
        "log": {"level": "warning"},
        "smtp": {"feeder": {"port": port, "max_size": "2GiB", "max_connections": 1000}},
    }
    for key, value in settings.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = workdir / "relay.toml"
    path.write_text(to_toml(config))
    log = open(workdir / "relay.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "zonerelay.cli", "serve", "-c", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return proc, port, path
        except OSError:
            time.sleep(0.05)
    raise SystemExit("relay did not start: " + (workdir / "relay.log").read_text())


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def queue_stats(config: Path) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "zonerelay.cli", "queue", "stats", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    data: dict[str, int] = json.loads(out.stdout)
    return data


def smtp_source(port: int, messages: int, size: int, sessions: int) -> float:
    started = time.monotonic()
    subprocess.run(
        ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size), "-d",
         "-f", "sender@bench.test", "-t", "rcpt@sink.test", f"127.0.0.1:{port}"],
        check=True,
    )
    return time.monotonic() - started


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cmd_ingest(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, _ = start_relay(Path(tmp), {"queue": {"workers": 0}})
        try:
            elapsed = smtp_source(port, args.messages, args.size, args.sessions)
            cpu = cpu_seconds(proc.pid)
        finally:
            stop(proc)
    print(f"ingest: {args.messages} x {args.size} B, {args.sessions} sessions: {elapsed:.2f} s, "
          f"{args.messages / elapsed:.0f} msg/s, relay CPU {cpu:.1f} s")


def cmd_e2e(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sink_port = free_port()
        sink = subprocess.Popen(["smtp-sink", "-c", f"127.0.0.1:{sink_port}", "1000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dns = DnsServer(work / "dns")
        (work / "dns").mkdir()
        dns.add_mx("sink.test", "mx.sink.test").add_a("mx.sink.test", "127.0.0.1").start()
        proc, port, config = start_relay(
            work,
            {
                "queue": {"workers": args.workers},
                "dns": {"nameservers": [dns.address]},
                "zones": {"default": {"port": sink_port}},
                "delivery": {"starttls": False},
            },
        )
        try:
            started = time.monotonic()
            ingest = smtp_source(port, args.messages, args.size, args.sessions)
            while True:
                stats = queue_stats(config)
                if stats["delivered"] + stats["bounced"] >= args.messages:
                    break
                time.sleep(0.2)
            elapsed = time.monotonic() - started
        finally:
            stop(proc)
            sink.terminate()
            dns.close()
    print(f"e2e: {args.messages} x {args.size} B, {args.sessions} sessions, {args.workers} workers: "
          f"ingest {args.messages / ingest:.0f} msg/s, end to end {elapsed:.2f} s = {args.messages / elapsed:.0f} msg/s "
          f"(delivered {stats['delivered']}, bounced {stats['bounced']})")


def cmd_big(args: argparse.Namespace) -> None:
    total = int(args.gib * 1024**3)
    line = b"x" * 998 + b"\r\n"
    block = line * 256  # 256 000 bytes
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, config = start_relay(Path(tmp), {"queue": {"workers": 0}})
        try:
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port)) as s:
                f = s.makefile("rb")
                f.readline()
                s.sendall(b"EHLO bench\r\nMAIL FROM:<a@bench.test>\r\nRCPT TO:<b@sink.test>\r\nDATA\r\n")
                for _ in range(4):
                    while not f.readline()[3:4] == b" ":
                        pass
                s.sendall(b"Subject: big\r\n\r\n")
                sent = 0
                while sent < total:
                    s.sendall(block)
                    sent += len(block)
                s.sendall(b".\r\n")
                reply = f.readline()
            elapsed = time.monotonic() - started
            status = Path(f"/proc/{proc.pid}/status").read_text()
            hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
        finally:
            stop(proc)
    print(f"big: {sent / 1024**3:.2f} GiB in {elapsed:.1f} s ({sent / elapsed / 1e6:.0f} MB/s); reply {reply.decode().strip()}; "
          f"relay peak RSS {hwm.split(':')[1].strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("ingest", "e2e"):
        p = sub.add_parser(name)
        p.add_argument("--messages", type=int, default=5000 if name == "ingest" else 10000)
        p.add_argument("--size", type=int, default=10240)
        p.add_argument("--sessions", type=int, default=20)
        p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    big = sub.add_parser("big")
    big.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args()
    if not shutil.which("smtp-source") and args.cmd != "big":
        raise SystemExit("smtp-source (Debian package postfix) is needed")
    {"ingest": cmd_ingest, "e2e": cmd_e2e, "big": cmd_big}[args.cmd](args)


if __name__ == "__main__":
    main()
